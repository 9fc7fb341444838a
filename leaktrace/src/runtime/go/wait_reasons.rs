//! What a goroutine waits for: `runtime.g.waitreason` is a uint8 enum
//! (since 1.11) whose meaning is the binary's own `waitReasonStrings`
//! array; values were inserted in the middle across releases (1.21 added
//! the sync lock reasons before "trace reader (blocked)"), so one release's
//! table misnames another's. The array is read from the binary where its
//! symbol is; the per-release tables below stand in where it is not (and
//! are checked against the binaries each release builds: see the tests).
use super::g_layout::GoRelease;

/// The longest array believed, and the longest reason (the runtime's are
/// under 32 bytes).
pub(crate) const MAX_REASONS: usize = 256;
pub(crate) const MAX_REASON_LEN: usize = 64;

const GO_1_19: &[&str] = &[
    "",
    "GC assist marking",
    "IO wait",
    "chan receive (nil chan)",
    "chan send (nil chan)",
    "dumping heap",
    "garbage collection",
    "garbage collection scan",
    "panicwait",
    "select",
    "select (no cases)",
    "GC assist wait",
    "GC sweep wait",
    "GC scavenge wait",
    "chan receive",
    "chan send",
    "finalizer wait",
    "force gc (idle)",
    "semacquire",
    "sleep",
    "sync.Cond.Wait",
    "timer goroutine (idle)",
    "trace reader (blocked)",
    "wait for GC cycle",
    "GC worker (idle)",
    "preempted",
    "debug call",
];

/// 1.21's first 20 are 1.19's; then the sync lock reasons, and the rest.
const GO_1_21_TAIL: &[&str] = &[
    "sync.Mutex.Lock",
    "sync.RWMutex.RLock",
    "sync.RWMutex.Lock",
    "trace reader (blocked)",
    "wait for GC cycle",
    "GC worker (idle)",
    "GC worker (active)",
    "preempted",
    "debug call",
    "GC mark termination",
    "stopping the world",
];

const GO_1_22_TAIL: &[&str] = &[
    "flushing proc caches",
    "trace goroutine status",
    "trace proc status",
    "page trace flush",
    "coroutine",
];

const GO_1_23_TAIL: &[&str] = &["GC weak to strong wait"];

/// The table of `release`, or None for a release not tabled.
pub(crate) fn for_release(release: GoRelease) -> Option<Vec<String>> {
    let common = &GO_1_19[..21];
    let tails: &[&[&str]] = match (release.major, release.minor) {
        (1, 19) => return Some(GO_1_19.iter().map(|s| (*s).to_owned()).collect()),
        (1, 21) => &[GO_1_21_TAIL],
        (1, 22) => &[GO_1_21_TAIL, GO_1_22_TAIL],
        (1, 23) => &[GO_1_21_TAIL, GO_1_22_TAIL, GO_1_23_TAIL],
        _ => return None,
    };
    Some(
        common
            .iter()
            .chain(tails.iter().flat_map(|t| t.iter()))
            .map(|s| (*s).to_owned())
            .collect(),
    )
}

/// The name of a goroutine's wait: the reason's string, or "waiting" for
/// reason 0 (as the runtime's traceback prints it), or "wait reason N"
/// for a value past the table (a torn read, a newer release).
pub(crate) fn name(reasons: &[String], value: u8) -> String {
    match reasons.get(usize::from(value)) {
        Some(reason) if !reason.is_empty() => reason.clone(),
        Some(_) => "waiting".to_owned(),
        None => format!("wait reason {value}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_release_names_chan_send_at_its_value() {
        for minor in [19, 21, 22, 23] {
            let table = for_release(GoRelease { major: 1, minor }).expect("tabled");
            assert_eq!(name(&table, 15), "chan send", "1.{minor}");
            assert_eq!(name(&table, 2), "IO wait", "1.{minor}");
            assert_eq!(name(&table, 0), "waiting", "1.{minor}");
        }
        let lengths: Vec<usize> = [19, 21, 22, 23]
            .into_iter()
            .map(|minor| for_release(GoRelease { major: 1, minor }).unwrap().len())
            .collect();
        assert_eq!(lengths, [27, 32, 37, 38]);
        let table = for_release(GoRelease {
            major: 1,
            minor: 21,
        })
        .unwrap();
        assert_eq!(name(&table, 21), "sync.Mutex.Lock");
        assert_eq!(name(&table, 200), "wait reason 200");
        assert_eq!(
            for_release(GoRelease {
                major: 1,
                minor: 20
            }),
            None
        );
    }
}
