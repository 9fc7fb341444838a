//! A command not started yet: where execvp would find it, and the objects
//! its dynamic linker would load (`ld.so --list`, which honours `LD_PRELOAD`
//! and `LD_LIBRARY_PATH` exactly as the launch will).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{
    allocator::Candidate,
    candidate,
    elf::{object_symbols, program_interpreter},
};

/// Finds `program` the way execvp would.
pub(crate) fn resolve_program(program: &Path) -> Result<PathBuf> {
    if program.components().count() > 1 {
        if !program.exists() {
            bail!("command not found: {}", program.display());
        }
        return Ok(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("command not found: {}", program.display()))
}

/// Every object a command not started yet will load: the executable,
/// then what its dynamic linker would load (`ld.so --list`, which honours
/// `LD_PRELOAD` and `LD_LIBRARY_PATH` exactly as the launch will), for
/// `allocator::choose_objects` (and, in exact object mode, to find the
/// Python interpreter before the command starts).
pub(crate) fn command_candidates(program: &Path) -> Result<Vec<Candidate>> {
    let data = super::elf::read_object(program)?;
    let interpreter = program_interpreter(&data)
        .with_context(|| format!("{} is not an ELF executable", program.display()))?;
    let display = program.to_string_lossy().into_owned();
    let mut candidates = vec![Candidate {
        path: program.to_path_buf(),
        display_path: display,
        symbols: object_symbols(&data)?,
    }];
    if let Some(interpreter) = interpreter {
        let listing = Command::new(&interpreter)
            .arg("--list")
            .arg(program)
            .output()
            .with_context(|| format!("running {} --list", interpreter.display()))?;
        if !listing.status.success() {
            bail!(
                "{} --list {} failed: {}",
                interpreter.display(),
                program.display(),
                String::from_utf8_lossy(&listing.stderr).trim()
            );
        }
        for path in parse_ld_list(&String::from_utf8_lossy(&listing.stdout)) {
            if let Ok(c) = candidate(PathBuf::from(&path), path) {
                candidates.push(c);
            }
        }
    }
    Ok(candidates)
}

/// Paths from `ld.so --list` output, in load order.
pub(crate) fn parse_ld_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once(" => ") {
                Some((_, rest)) => rest.split(" (").next()?,
                None => line.split(" (").next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ld_list_output_is_parsed_in_order() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibjemalloc.so.2 => /lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007e)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ld_list(text),
            [
                "/lib/x86_64-linux-gnu/libjemalloc.so.2",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
