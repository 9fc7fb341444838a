//! `run`'s entry stop, kernel side: the `entry_stop` uprobe (see the eBPF
//! crate's `entry_stop`) attached at the command's entry point, scoped to
//! the command, and told which signal to send it.
//!
//! The program is loaded on first use: only `run` has an entry stop. Its
//! link lives as long as the probes do; the kernel takes the uprobe out
//! when leaktrace's fds close, however leaktrace ends.
use std::{num::NonZeroU32, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    maps::HashMap,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};

use super::KernelProbes;

const PROGRAM: &str = "entry_stop";

impl KernelProbes {
    /// Makes `pid` get `signal` (once) when it runs the instruction at
    /// `file_offset` in `object`. `object` may be a /proc magic link
    /// (`/proc/PID/map_files/...`): the kernel resolves it to the file.
    pub(crate) fn arm_entry_stop(
        &mut self,
        pid: u32,
        object: &Path,
        file_offset: u64,
        signal: i32,
    ) -> Result<()> {
        let scope =
            UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0 cannot be traced")?);
        let uprobe: &mut UProbe = self
            .ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("program {PROGRAM} missing from the eBPF object"))?
            .try_into()?;
        if uprobe.fd().is_err() {
            uprobe
                .load()
                .with_context(|| format!("loading program {PROGRAM}"))?;
        }
        // The signal is asked for before the probe exists: the first hit
        // finds it.
        let mut stops: HashMap<_, u32, u32> = HashMap::try_from(
            self.ebpf
                .map_mut("ENTRY_STOPS")
                .context("ENTRY_STOPS map missing")?,
        )?;
        stops
            .insert(pid, u32::try_from(signal).context("signal number")?, 0)
            .context("asking for the entry stop")?;
        let uprobe: &mut UProbe = self
            .ebpf
            .program_mut(PROGRAM)
            .context("program entry_stop")?
            .try_into()?;
        uprobe
            .attach(
                UProbeAttachLocation::AbsoluteOffset(file_offset),
                object,
                scope,
            )
            .with_context(|| {
                format!(
                    "attaching the entry stop to {} (offset {file_offset:#x})",
                    object.display()
                )
            })?;
        Ok(())
    }
}
