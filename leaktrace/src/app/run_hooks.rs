//! `run`'s hooks at its command's entry and exit stops, which run on the
//! launcher thread while the command is stopped, and what `run` exits with.
//!
//! A hook must not leave a poisoned mutex behind: the tracer locks the same
//! mappings and unwind tables afterwards, and a poisoned lock would turn
//! one bug into a panic at every later lock. So no hook holds a lock while
//! code that may panic runs, unless it catches the panic before the guard
//! is dropped ([`locked`], [`in_slot`]); unwind tables that a panic left
//! half-loaded are dropped, not kept. The launcher also catches a
//! hook's panic, so the command goes on and its status still arrives.
use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use anyhow::{Result, anyhow, bail};

use super::event_loop::Stop;
use crate::{kernel::unwind_tables::UnwindTables, symbolize::ProcessMaps};

/// Locks `mutex`, poisoned or not (see [`locked`] and [`in_slot`] for
/// why the data is consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `work` under the lock and catches its panic before the guard is
/// dropped, so the mutex is never poisoned; None after a panic. Only for
/// work that leaves `T` consistent when it stops half-way, as
/// `ProcessMaps::refresh` does (it changes nothing before its read and
/// parse are done).
fn locked<T, R>(mutex: &Mutex<T>, work: impl FnOnce(&mut T) -> R) -> Option<R> {
    let mut guard = lock(mutex);
    catch_unwind(AssertUnwindSafe(|| work(&mut guard))).ok()
}

/// Runs `work` on the value in `slot`, under the lock, and catches its
/// panic before the guard is dropped: the mutex is never poisoned, and a
/// value `work` left half-done (tables half-loaded) is dropped, the slot
/// left empty. None when the slot is empty; Some(Err) after a panic.
/// Other users of the slot wait for `work`, as they would for any holder.
fn in_slot<T, R>(slot: &Mutex<Option<T>>, work: impl FnOnce(&mut T) -> R) -> Option<Result<R>> {
    let mut guard = lock(slot);
    let value = guard.as_mut()?;
    let Ok(result) = catch_unwind(AssertUnwindSafe(|| work(value))) else {
        *guard = None;
        return Some(Err(anyhow!("it panicked, and was dropped")));
    };
    Some(Ok(result))
}

/// At the entry point: the mappings the dynamic loader made, and their
/// unwind tables loaded before main runs.
pub(super) fn at_entry(
    maps: Arc<Mutex<ProcessMaps>>,
    unwind: Arc<Mutex<Option<UnwindTables>>>,
    quiet: bool,
) -> impl FnOnce() + Send + 'static {
    move || {
        let changed = locked(&maps, |maps| {
            maps.refresh().then(|| {
                (
                    maps.pid,
                    maps.current().to_vec(),
                    PathBuf::from(maps.root()),
                )
            })
        });
        let Some(Some((pid, mappings, root))) = changed else {
            return;
        };
        let loaded = in_slot(&unwind, |tables| {
            tables
                .load_process(pid, &mappings, &root)
                .map(|()| tables.summary())
        })
        .map(|outcome| outcome.and_then(|loaded| loaded));
        match loaded {
            Some(Ok(summary)) if !quiet => eprintln!("leaktrace: {summary}"),
            Some(Err(err)) => eprintln!("leaktrace: warning: unwind tables not loaded: {err:#}"),
            Some(Ok(_)) | None => {}
        }
    }
}

/// At the exit stop: the mappings read one last time.
pub(super) fn refresh_at_exit(maps: &Mutex<ProcessMaps>) {
    locked(maps, ProcessMaps::refresh);
}

/// `run`'s exit code: the command's (128 + signal if a signal ended it),
/// 0 when tracing stopped first; an error when its status was lost.
pub(super) fn exit_code(stop: &Stop) -> Result<i32> {
    match stop {
        Stop::Exited(Some(status)) => status.as_exit_code(),
        Stop::Exited(None) => {
            bail!("lost track of the command: its launcher ended without its exit status")
        }
        Stop::DurationElapsed | Stop::Signal(_) => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::{Stop, exit_code, in_slot, locked};
    use crate::target::launch::ExitStatus;

    #[test]
    fn a_panic_in_locked_work_poisons_nothing() {
        let mutex = Mutex::new(vec![1]);
        let out = locked(&mutex, |v| {
            v.push(2);
            panic!("a bug in the work");
        });
        assert_eq!(out, None);
        assert!(!mutex.is_poisoned());
        assert_eq!(*mutex.lock().expect("not poisoned"), [1, 2]);
        assert_eq!(locked(&mutex, |v| v.len()), Some(2));
    }

    #[test]
    fn a_panic_in_work_on_a_slot_poisons_nothing_and_drops_the_value() {
        let slot = Mutex::new(Some(5));
        let doubled = in_slot(&slot, |v| {
            *v *= 2;
            *v
        });
        assert_eq!(doubled.map(Result::unwrap), Some(10));
        assert_eq!(*slot.lock().expect("not poisoned"), Some(10), "kept");
        let panicked = in_slot(&slot, |_| panic!("a bug in the work"));
        let message = format!("{:#}", panicked.expect("slot was full").unwrap_err());
        assert!(message.contains("panicked"), "{message}");
        assert!(!slot.is_poisoned());
        assert_eq!(*slot.lock().expect("not poisoned"), None, "dropped");
        assert!(in_slot(&slot, |v| *v).is_none(), "empty slot");
        *slot.lock().expect("not poisoned") = Some(7);
        assert_eq!(in_slot(&slot, |v| *v).map(Result::unwrap), Some(7));
    }

    #[test]
    fn run_exits_with_the_commands_status_or_an_error() {
        assert_eq!(
            exit_code(&Stop::Exited(Some(ExitStatus::Code(7)))).unwrap(),
            7
        );
        assert_eq!(
            exit_code(&Stop::Exited(Some(ExitStatus::Signal(libc::SIGSEGV)))).unwrap(),
            139
        );
        assert_eq!(exit_code(&Stop::DurationElapsed).unwrap(), 0);
        assert_eq!(exit_code(&Stop::Signal("SIGINT")).unwrap(), 0);
        for lost in [
            Stop::Exited(None),
            Stop::Exited(Some(ExitStatus::Lost(libc::ECHILD))),
        ] {
            let message = format!("{:#}", exit_code(&lost).unwrap_err());
            assert!(
                message.starts_with("lost track of the command") && !message.contains('\n'),
                "{message}"
            );
        }
    }
}
