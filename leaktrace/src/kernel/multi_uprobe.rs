//! Multi-uprobe links (`BPF_TRACE_UPROBE_MULTI`, Linux 6.6): every probe
//! one program puts in one object, in a single link.
//!
//! Why: removing a perf-event uprobe waits for RCU grace periods under the
//! kernel's global trace event mutex, about 100 ms a probe here (measured
//! with `strace -T` on `close`), one after the other whatever the number
//! of threads. A `trace --pid` of 22 probes took 3 s to exit after its
//! report, and `--all` in allocations mode many seconds. A multi link
//! unregisters all its probes, then waits for the grace periods once, and
//! takes no global mutex: measured here, one link of 22 or 100 offsets
//! closes in ~45 ms, and 50 links closed from 50 threads at once in
//! ~110 ms.
//!
//! aya 0.14 neither loads a program for this attach type nor creates the
//! link, so the three uprobe programs are loaded a second time here from
//! the same object, relocated against the maps aya already created (the
//! programs share every map with aya's copies), and linked with the `bpf`
//! syscall. Where any of it fails (an older kernel), `KernelProbes` keeps
//! to perf links.
use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, maps::Map};
use aya_obj::generated::{
    BPF_F_UPROBE_MULTI_RETURN, bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type,
};

/// Whether a multi link scoped to a pid fires in all its threads: before
/// 6.10 the kernel compared the running thread with the task it looked up
/// at attach time (the process's main thread) and dropped every other
/// thread's calls, silently (fixed by "bpf: fix multi-uprobe PID filtering
/// logic"). There, a pid's probes are perf links; probes for every process
/// (pid 0) are not filtered and use multi links on any kernel with them.
pub(crate) fn pid_filter_is_sound(release: &str) -> bool {
    super::features::release(release) >= super::features::release("6.10")
}

/// This kernel's release (`uname -r`).
pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A uprobe program loaded for multi links.
pub(crate) struct MultiProgram {
    pub name: &'static str,
    fd: OwnedFd,
}

/// Loads `names` (uprobe programs of the eBPF object `data`, which `ebpf`
/// loaded) once more, for multi links. Call before any map is taken out
/// of `ebpf`: every map is needed to relocate the programs.
pub(crate) fn load(data: &[u8], ebpf: &Ebpf, names: &[&'static str]) -> Result<Vec<MultiProgram>> {
    let target_btf = aya_obj::btf::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let map_fds: Vec<(String, i32)> = ebpf
        .maps()
        .map(|(name, map)| (name.to_string(), map_fd(map)))
        .collect();
    // The verifier needs the functions' BTF (bpf_loop's callbacks): the
    // copy aya loaded, which has the object's type ids.
    let btf = names
        .first()
        .and_then(|&name| ebpf.program(name)?.info().ok()?.btf_id())
        .context("the loaded programs have no BTF")?;
    let btf = btf_fd(btf).context("opening the programs' BTF")?;
    names
        .iter()
        .map(|&name| {
            let (function, license) = linked(data, name, &target_btf, &map_fds)?;
            let fd = load_program(name, &function, &license, &btf)
                .with_context(|| format!("loading {name} for multi-uprobe links"))?;
            Ok(MultiProgram { name, fd })
        })
        .collect()
}

/// Program `name` of the object `data`, relocated and linked with the
/// functions it calls. One object per program, holding that program only:
/// `relocate_calls` stores each linked program in place of its function,
/// so with several, what one is linked from would depend on the order the
/// others came in.
fn linked(
    data: &[u8],
    name: &str,
    target_btf: &aya_obj::btf::Btf,
    map_fds: &[(String, i32)],
) -> Result<(aya_obj::Function, CString)> {
    let mut object = aya_obj::Object::parse(data).context("parsing the eBPF object")?;
    object.programs.retain(|program, _| program == name);
    let program = object
        .programs
        .get(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .clone();
    object
        .relocate_btf(target_btf)
        .context("relocating the eBPF object's BTF accesses")?;
    let maps = object.maps.clone();
    let text_sections: HashSet<usize> = object.functions.keys().map(|&(s, _)| s).collect();
    object
        .relocate_maps(
            map_fds
                .iter()
                .filter_map(|(name, fd)| Some((name.as_str(), *fd, maps.get(name)?))),
            &text_sections,
        )
        .context("relocating the eBPF object's maps")?;
    object
        .relocate_calls(&text_sections)
        .context("relocating the eBPF object's calls")?;
    let function = object
        .functions
        .remove(&program.function_key())
        .with_context(|| format!("program {name} has no code"))?;
    Ok((function, program.license))
}

/// The fd of a map aya created.
fn map_fd(map: &Map) -> i32 {
    let data = match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    data.fd().as_fd().as_raw_fd()
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr of the size
    // passed; the pointers inside it outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// An fd for the loaded BTF object `id`.
fn btf_fd(id: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: bpf_attr is plain data, for which all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
    bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr)
}

fn load_program(
    name: &str,
    function: &aya_obj::Function,
    license: &CString,
    btf: &OwnedFd,
) -> Result<OwnedFd> {
    let instructions: &[bpf_insn] = &function.instructions;
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    let mut log = vec![0u8; 1 << 20];
    let attempt = |log: Option<&mut [u8]>| {
        // SAFETY: bpf_attr is plain data, for which all zeroes is valid.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the plain-data fields of the union's member
        // BPF_PROG_LOAD reads.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
        load.expected_attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
        load.insn_cnt = instructions.len() as u32;
        load.insns = instructions.as_ptr() as u64;
        load.license = license.as_ptr() as u64;
        load.prog_btf_fd = btf.as_raw_fd() as u32;
        // The records' counts are the vectors' lengths: `num_info` counts
        // those of the whole section the program came from (the verifier
        // refuses the extra ones as records out of order).
        if function.func_info_rec_size > 0 {
            load.func_info = func_info.as_ptr() as u64;
            load.func_info_cnt = function.func_info.func_info.len() as u32;
            load.func_info_rec_size = function.func_info_rec_size as u32;
        }
        if function.line_info_rec_size > 0 {
            load.line_info = line_info.as_ptr() as u64;
            load.line_info_cnt = function.line_info.line_info.len() as u32;
            load.line_info_rec_size = function.line_info_rec_size as u32;
        }
        for (slot, byte) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *slot = byte as libc::c_char;
        }
        if let Some(log) = log {
            load.log_level = 1;
            load.log_size = log.len() as u32;
            load.log_buf = log.as_mut_ptr() as u64;
        }
        bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(err) => {
            // Again, for the verifier's account of why.
            let _: std::io::Result<OwnedFd> = attempt(Some(&mut log));
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!(
                "{err}: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )
        }
    }
}

/// One multi link: `program` at each of `offsets` (file offsets) in
/// `object`, each with its cookie, as a return probe with `returns`, for
/// `pid`'s threads only, or every process with 0.
pub(crate) fn attach(
    program: &MultiProgram,
    object: &Path,
    offsets: &[u64],
    cookies: &[u64],
    returns: bool,
    pid: u32,
) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    debug_assert_eq!(offsets.len(), cookies.len());
    let path = CString::new(object.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL in its path", object.display()))?;
    // SAFETY: bpf_attr is plain data, for which all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the plain-data fields of the union's member
    // BPF_LINK_CREATE reads.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = program.fd.as_raw_fd() as u32;
    link.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
    // SAFETY: as above, the uprobe_multi member of the link's union.
    let multi = unsafe { &mut link.__bindgen_anon_3.uprobe_multi };
    multi.path = path.as_ptr() as u64;
    multi.offsets = offsets.as_ptr() as u64;
    multi.cookies = cookies.as_ptr() as u64;
    multi.cnt = offsets.len() as u32;
    multi.flags = if returns {
        BPF_F_UPROBE_MULTI_RETURN
    } else {
        0
    };
    multi.pid = pid;
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).with_context(|| {
        format!(
            "creating a multi-uprobe link for {} in {}",
            program.name,
            object.display()
        )
    })
}

/// Closes `links` from several threads at once: each close waits for its
/// own grace periods, and concurrent waits share them.
pub(crate) fn close_all(links: Vec<OwnedFd>) {
    const THREADS: usize = 32;
    if links.len() <= 1 {
        return;
    }
    let per_thread = links.len().div_ceil(THREADS);
    let mut links = links;
    std::thread::scope(|scope| {
        while !links.is_empty() {
            let batch: Vec<OwnedFd> = links.split_off(links.len().saturating_sub(per_thread));
            // Without a thread, the batch closes here, in turn.
            let _: std::io::Result<_> = std::thread::Builder::new()
                .name("leaktrace-close".into())
                .spawn_scoped(scope, move || drop(batch));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::pid_filter_is_sound;

    #[test]
    fn pid_scoped_multi_links_need_6_10() {
        for (release, sound) in [
            ("6.18.0-1-amd64", true),
            ("6.10.0", true),
            ("7.0.1", true),
            ("6.9.12-generic", false),
            ("6.8.0-45-generic", false),
            ("5.15.0", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(pid_filter_is_sound(release), sound, "{release:?}");
        }
    }
}
