//! Uprobe links: attaching a plan as multi links where the kernel has
//! them (see `multi_uprobe`), as perf links otherwise, and closing them
//! off the event loop while tracing and all at once at the end.
use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, Result};
use aya::programs::{
    UProbe,
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
};

use super::{
    KernelProbes, Scope,
    attach::{Attachment, Program},
    multi_uprobe, program_name,
};

/// Uprobes attached together, to detach them when their process is gone.
pub(crate) enum ProbeLink {
    /// One perf-event uprobe, owned by the program it runs.
    Perf {
        program: &'static str,
        id: UProbeLinkId,
    },
    /// A multi link (see `multi_uprobe`), by its key in `multi_links`.
    Multi(u64),
}

impl KernelProbes {
    /// Attaches `plan` for `scope`, pushing each link to `links` (see
    /// [`KernelProbes::attach`]).
    pub(super) fn attach_each(
        &mut self,
        plan: &[Attachment],
        scope: Scope,
        links: &mut Vec<ProbeLink>,
    ) -> Result<()> {
        let (uprobe_scope, pid) = match scope {
            Scope::Process(pid) => (
                UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0 cannot be traced")?),
                pid,
            ),
            Scope::AllProcesses => (UProbeScope::AllProcesses, 0),
        };
        // One multi link per run of the plan with the same program and
        // object (the plan's order between runs is kept); a run the
        // kernel refuses as one link is attached probe by probe, which
        // names the probe at fault.
        let mut rest = plan;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .take_while(|a| a.program == first.program && a.object == first.object)
                .count();
            let (group, after) = rest.split_at(run);
            rest = after;
            if let Some(link) = self.attach_multi(group, pid) {
                links.push(link);
                continue;
            }
            for attachment in group {
                links.push(self.attach_perf(attachment, uprobe_scope)?);
            }
        }
        Ok(())
    }

    /// `group` (one program in one object) as one multi link; None where
    /// there are no multi programs or the kernel refuses the link.
    fn attach_multi(&mut self, group: &[Attachment], pid: u32) -> Option<ProbeLink> {
        let first = group.first()?;
        if pid != 0 && !self.multi_pid_filter {
            return None;
        }
        let name = program_name(self.empty_programs, first.program);
        let program = self.multi.iter().find(|p| p.name == name)?;
        let offsets: Vec<u64> = group.iter().map(|a| a.file_offset).collect();
        let cookies: Vec<u64> = group.iter().map(Attachment::cookie).collect();
        let returns = first.program == Program::AllocReturn;
        let fd =
            multi_uprobe::attach(program, &first.object, &offsets, &cookies, returns, pid).ok()?;
        let key = self.next_multi_link;
        self.next_multi_link += 1;
        self.multi_links.insert(key, (fd, group.len()));
        self.attached += group.len();
        Some(ProbeLink::Multi(key))
    }

    fn attach_perf(&mut self, attachment: &Attachment, scope: UProbeScope) -> Result<ProbeLink> {
        let program = program_name(self.empty_programs, attachment.program);
        let uprobe: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .expect("loaded by KernelProbes::load")
            .try_into()?;
        let id = uprobe
            .attach(
                UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(attachment.file_offset),
                    cookie: Some(attachment.cookie()),
                },
                &attachment.object,
                scope,
            )
            .with_context(|| {
                format!(
                    "attaching {} to {} in {} (offset {:#x})",
                    attachment.program.name(),
                    attachment.func.symbol(),
                    attachment.object.display(),
                    attachment.file_offset
                )
            })?;
        self.attached += 1;
        Ok(ProbeLink::Perf { program, id })
    }

    /// Detaches probes (their process exited, or a plan failed half-way),
    /// in the background (see `Detacher`).
    pub(crate) fn detach(&mut self, links: Vec<ProbeLink>) {
        for link in links {
            match link {
                ProbeLink::Perf { program, id } => {
                    let uprobe: Result<&mut UProbe, _> = self
                        .ebpf
                        .program_mut(program)
                        .expect("loaded by KernelProbes::load")
                        .try_into();
                    // A link already let go of needs nothing more.
                    if let Ok(link) = uprobe.and_then(|uprobe| uprobe.take_link(id)) {
                        self.detacher.close(Doomed::Perf(link));
                        self.attached -= 1;
                    }
                }
                ProbeLink::Multi(key) => {
                    if let Some((fd, probes)) = self.multi_links.remove(&key) {
                        self.detacher.close(Doomed::Multi(fd));
                        self.attached -= probes;
                    }
                }
            }
        }
    }
}

/// Closes uprobe links on a thread of its own. Closing a uprobe's perf
/// event waits for RCU grace periods under the kernel's global trace event
/// mutex: about 80 ms a probe here, measured, one after the other whatever
/// the number of threads (22 probes, a process's plan, take ~2 s; a multi
/// link, ~45 ms for all of its probes, see `multi_uprobe`). Closing
/// them in the event loop would stall tracing; and while one closes, no
/// probe can be attached, so the closing thread stands aside whenever
/// probes are being attached (a child just forked waits for one close at
/// most, not for a queue of them).
pub(super) struct Detacher {
    queue: std::sync::mpsc::Sender<Doomed>,
    /// Attach calls under way.
    pub(super) attaching: Arc<AtomicUsize>,
}

impl Detacher {
    pub(super) fn start() -> Detacher {
        let (queue, links) = std::sync::mpsc::channel::<Doomed>();
        let attaching = Arc::new(AtomicUsize::new(0));
        let busy = attaching.clone();
        // Without the thread, the receiver is dropped with the closure and
        // `close` drops each link where it is.
        let _: std::io::Result<_> = std::thread::Builder::new()
            .name("leaktrace-detach".into())
            .spawn(move || {
                for link in links {
                    while busy.load(Ordering::Acquire) != 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    drop(link);
                }
            });
        Detacher { queue, attaching }
    }

    /// Closes `link` soon.
    fn close(&self, link: Doomed) {
        if let Err(std::sync::mpsc::SendError(link)) = self.queue.send(link) {
            drop(link);
        }
    }
}

/// A link for the detaching thread to close (dropping it closes it).
#[expect(dead_code, reason = "held only to be dropped")]
enum Doomed {
    Perf(UProbeLink),
    Multi(std::os::fd::OwnedFd),
}

impl Drop for KernelProbes {
    /// Closes the multi links all at once (see `multi_uprobe`); aya then
    /// closes the perf links, if any, one by one.
    fn drop(&mut self) {
        let links = self.multi_links.drain().map(|(_, (fd, _))| fd).collect();
        multi_uprobe::close_all(links);
    }
}
