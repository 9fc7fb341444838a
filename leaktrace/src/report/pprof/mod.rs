//! pprof: a gzipped `profile.proto` of the outstanding allocations, for
//! `go tool pprof` (and anything else that reads pprof profiles).
//!
//! Two sample types, `inuse_space`/bytes (the default) and
//! `inuse_objects`/count, one sample per call site. Each site's frames
//! become locations, innermost first (`location_id[0]` is the function that
//! called the allocator); inlined frames are extra lines of the location of
//! the frame they were inlined into, as pprof expects. Each module (the
//! executable or library holding the code) is a mapping. The allocator
//! function, the pid and the age of the site's oldest block are sample
//! labels (`allocator`, `pid`, `oldest_age`), as are, when the process runs
//! in one, its container's id and its Kubernetes pod's uid (`container_id`,
//! `pod_uid`: `-tagfocus=container_id=...` keeps one container's memory);
//! the report's header lines are profile comments (`go tool pprof
//! -comments`).
//!
//! The message types are written out below with prost's derive macros (the
//! field numbers of github.com/google/pprof's `proto/profile.proto`), so no
//! protoc is needed at build time.
use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use prost::Message as _;

mod proto;

pub use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

use super::{ContainerReport, Report, text::human_bytes};
use crate::symbolize::Frame;

/// The function name given to a site whose stack could not be captured
/// (pprof has no sample without a location worth showing).
pub const NO_STACK: &str = "[no stack captured]";

/// The sample types, in order: the values of each sample.
pub const SAMPLE_TYPES: [(&str, &str); 2] = [("inuse_space", "bytes"), ("inuse_objects", "count")];

/// Gzipped, encoded profile of `report`.
pub fn render(report: &Report) -> Vec<u8> {
    let encoded = profile(report).encode_to_vec();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&encoded)
        .and_then(|()| gz.finish())
        .expect("compressing into memory cannot fail")
}

/// Gunzips and decodes a profile (ours or any other pprof profile).
pub fn decode(gzipped: &[u8]) -> Result<Profile> {
    let mut encoded = Vec::new();
    GzDecoder::new(gzipped)
        .read_to_end(&mut encoded)
        .context("not valid gzip data")?;
    Profile::decode(encoded.as_slice()).context("not a pprof profile (profile.proto)")
}

/// What the comments say about sampling (`Report::sample_bytes`).
fn sampling_comment(report: &Report) -> String {
    if report.sample_bytes == 0 {
        "sampled: no (every allocation and release was traced; values are exact)".into()
    } else {
        format!(
            "sampled: yes, one sample per {} bytes allocated on average (values are unbiased estimates)",
            report.sample_bytes
        )
    }
}

/// The profile of `report`, before encoding.
pub fn profile(report: &Report) -> Profile {
    let mut builder = Builder::default();
    let profile_sample_types = SAMPLE_TYPES
        .iter()
        .map(|(kind, unit)| ValueType {
            r#type: builder.string(kind),
            unit: builder.string(unit),
        })
        .collect();
    let period_type = ValueType {
        r#type: builder.string("space"),
        unit: builder.string("bytes"),
    };
    let default_sample_type = builder.string(SAMPLE_TYPES[0].0);
    // pprof takes the first mapping for the main binary (its "File:" line).
    if let Some(module) = main_module(report) {
        builder.mapping(module);
    }
    let comment = comments(report).iter().map(|c| builder.string(c)).collect();
    let containers: HashMap<u32, &ContainerReport> = report
        .processes
        .iter()
        .filter_map(|p| Some((p.pid, p.container.as_ref()?)))
        .collect();
    let samples = report
        .sites
        .iter()
        .map(|site| {
            let location_id = builder.stack(&site.frames);
            let mut label = vec![
                Label {
                    key: builder.string("allocator"),
                    str: builder.string(&site.allocator),
                    ..Label::default()
                },
                Label {
                    key: builder.string("pid"),
                    num: i64::from(site.pid),
                    ..Label::default()
                },
                Label {
                    key: builder.string("oldest_age"),
                    num: clamp(site.oldest_age_ms),
                    num_unit: builder.string("ms"),
                    ..Label::default()
                },
            ];
            if let Some(container) = containers.get(&site.pid) {
                let pod = container.pod.as_deref();
                for (key, value) in [("container_id", Some(&*container.id)), ("pod_uid", pod)] {
                    if let Some(value) = value {
                        label.push(Label {
                            key: builder.string(key),
                            str: builder.string(value),
                            ..Label::default()
                        });
                    }
                }
            }
            Sample {
                location_id,
                value: vec![clamp(site.bytes), clamp(site.count)],
                label,
            }
        })
        .collect();
    let elapsed_nanos = clamp(report.elapsed_ms.saturating_mul(1_000_000));
    let now_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    Profile {
        sample_type: profile_sample_types,
        sample: samples,
        mapping: builder.mappings,
        location: builder.locations,
        function: builder.functions,
        string_table: builder.strings,
        time_nanos: now_nanos.saturating_sub(elapsed_nanos),
        duration_nanos: elapsed_nanos,
        period_type: Some(period_type),
        // As Go's heap profiles: the sampling period, values already scaled.
        period: clamp(report.sample_bytes.max(1)),
        comment,
        default_sample_type,
        ..Profile::default()
    }
}

/// The executable: the first module, scanning each stack from its root,
/// that is not a shared library.
fn main_module(report: &Report) -> Option<&str> {
    report
        .sites
        .iter()
        .flat_map(|site| site.frames.iter().rev())
        .map(|frame| frame.module.as_str())
        .find(|module| {
            let name = module.rsplit('/').next().unwrap_or(module);
            !name.is_empty() && !name.contains(".so")
        })
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The report's header, one comment a line.
fn comments(report: &Report) -> Vec<String> {
    let mut header = format!(
        "leaktrace {} report: {}",
        report.kind(),
        report.target_label()
    );
    let _: std::fmt::Result = write!(header, ", traced {} ms", report.elapsed_ms);
    let t = &report.totals;
    let (what, units) = if report.mode == "growth" {
        ("resident growth since attach", "pages")
    } else {
        ("outstanding", "allocations")
    };
    let mut outstanding = format!(
        "{what}: {} bytes ({}) in {} {units} at {} call sites",
        t.outstanding_bytes,
        human_bytes(t.outstanding_bytes),
        t.outstanding_allocations,
        t.call_sites
    );
    if report.min_age_ms > 0 {
        let _: std::fmt::Result = write!(outstanding, ", older than {} ms", report.min_age_ms);
    }
    let mut comments = vec![
        header,
        sampling_comment(report),
        outstanding,
        format!("lost: {}", report.losses.summary()),
    ];
    // Not samples: they would dwarf the leaks (see report::c_library).
    comments.extend(
        super::c_library::summary_lines(&report.c_library, human_bytes)
            .into_iter()
            .map(|line| format!("held by the C library, not in the samples: {line}")),
    );
    comments.push(format!(
        "allocator objects: {}",
        report.allocator_objects.join(", ")
    ));
    comments
}

/// A location's identity: mapping, address, (function, line) of each line.
type LocationKey = (u64, u64, Vec<(u64, i64)>);

/// Interns strings, functions, mappings and locations.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<String, u64>,
    locations: Vec<Location>,
    location_ids: HashMap<LocationKey, u64>,
}

impl Builder {
    fn string(&mut self, text: &str) -> i64 {
        if self.strings.is_empty() {
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(text.to_string());
        self.string_ids.insert(text.to_string(), id);
        id
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let name = self.string(name);
        let filename = self.string(file.unwrap_or(""));
        let next = self.functions.len() as u64 + 1;
        let id = *self.function_ids.entry((name, filename)).or_insert(next);
        if id == next {
            self.functions.push(Function {
                id,
                name,
                system_name: name,
                filename,
                start_line: 0,
            });
        }
        id
    }

    /// The mapping of `module`.
    fn mapping(&mut self, module: &str) -> u64 {
        if let Some(&id) = self.mapping_ids.get(module) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(module);
        self.mappings.push(Mapping {
            id,
            filename,
            has_functions: true,
            ..Mapping::default()
        });
        self.mapping_ids.insert(module.to_string(), id);
        id
    }

    /// The mapping of `frame`'s module, its flags updated with the frame.
    fn frame_mapping(&mut self, frame: &Frame) -> u64 {
        let id = self.mapping(&frame.module);
        let mapping = &mut self.mappings[id as usize - 1];
        mapping.has_filenames |= frame.file.is_some();
        mapping.has_line_numbers |= frame.line.is_some();
        mapping.has_inline_frames |= frame.inlined;
        id
    }

    fn location(&mut self, mapping_id: u64, address: u64, line: Vec<Line>) -> u64 {
        let key = (
            mapping_id,
            address,
            line.iter().map(|l| (l.function_id, l.line)).collect(),
        );
        let next = self.locations.len() as u64 + 1;
        let id = *self.location_ids.entry(key).or_insert(next);
        if id == next {
            self.locations.push(Location {
                id,
                mapping_id,
                address,
                line,
                is_folded: false,
            });
        }
        id
    }

    /// The location ids of a stack, innermost first; inlined frames join
    /// the location of the frame they were inlined into.
    fn stack(&mut self, frames: &[Frame]) -> Vec<u64> {
        if frames.is_empty() {
            let function_id = self.function(NO_STACK, None);
            return vec![self.location(
                0,
                0,
                vec![Line {
                    function_id,
                    line: 0,
                }],
            )];
        }
        let mut ids = Vec::with_capacity(frames.len());
        let mut lines = Vec::new();
        for (index, frame) in frames.iter().enumerate() {
            let function_id = self.function(&frame.function, frame.file.as_deref());
            lines.push(Line {
                function_id,
                line: frame.line.map_or(0, i64::from),
            });
            let mapping_id = self.frame_mapping(frame);
            // An inlined frame shares the next frame's location; one left
            // at the end (nothing to be inlined into) gets its own.
            if frame.inlined && index + 1 < frames.len() {
                continue;
            }
            let id = self.location(mapping_id, frame.address, std::mem::take(&mut lines));
            ids.push(id);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;

    /// The function names and lines of a sample, innermost first.
    fn frames_of(profile: &Profile, sample: &Sample) -> Vec<(String, String, i64)> {
        let mut out = Vec::new();
        for id in &sample.location_id {
            let location = &profile.location[*id as usize - 1];
            assert_eq!(location.id, *id);
            for line in &location.line {
                let function = &profile.function[line.function_id as usize - 1];
                assert_eq!(function.id, line.function_id);
                out.push((
                    profile.string(function.name).to_string(),
                    profile.string(function.filename).to_string(),
                    line.line,
                ));
            }
        }
        out
    }

    fn label<'a>(profile: &Profile, sample: &'a Sample, key: &str) -> &'a Label {
        sample
            .label
            .iter()
            .find(|l| profile.string(l.key) == key)
            .unwrap_or_else(|| panic!("no label {key}"))
    }

    #[test]
    fn gunzips_and_decodes_to_the_sites() {
        let bytes = render(&fixtures::report());
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        let profile = decode(&bytes).unwrap();
        assert_eq!(profile.string_table[0], "");
        let types: Vec<(&str, &str)> = profile
            .sample_type
            .iter()
            .map(|t| (profile.string(t.r#type), profile.string(t.unit)))
            .collect();
        assert_eq!(types, SAMPLE_TYPES);
        assert_eq!(profile.string(profile.default_sample_type), "inuse_space");
        let period = profile.period_type.as_ref().unwrap();
        assert_eq!(
            (profile.string(period.r#type), profile.string(period.unit)),
            ("space", "bytes")
        );
        assert_eq!(profile.duration_nanos, 1_500_000_000);
        assert_eq!(profile.period, 1);
        let comments: Vec<&str> = profile.comment.iter().map(|&c| profile.string(c)).collect();
        assert!(
            comments.iter().any(|c| c.starts_with("sampled: no")),
            "{comments:?}"
        );
        assert!(
            comments.contains(&"leaktrace final report: pid 42 (./prog), traced 1500 ms"),
            "{comments:?}"
        );

        assert_eq!(profile.sample.len(), 2);
        let first = &profile.sample[0];
        assert_eq!(first.value, [4096, 4]);
        assert_eq!(
            frames_of(&profile, first),
            [
                ("leak_a".to_string(), "prog.c".to_string(), 10),
                ("main".to_string(), "prog.c".to_string(), 30),
            ]
        );
        assert_eq!(
            profile.string(label(&profile, first, "allocator").str),
            "malloc"
        );
        assert_eq!(label(&profile, first, "pid").num, 42);
        let age = label(&profile, first, "oldest_age");
        assert_eq!((age.num, profile.string(age.num_unit)), (1200, "ms"));

        let second = &profile.sample[1];
        assert_eq!(second.value, [100, 1]);
        assert_eq!(
            frames_of(&profile, second),
            [
                ("leak;b".to_string(), String::new(), 0),
                ("main".to_string(), "prog.c".to_string(), 31),
            ]
        );
        assert_eq!(
            profile.string(label(&profile, second, "allocator").str),
            "calloc"
        );

        // One module, one mapping; every location points at it.
        assert_eq!(profile.mapping.len(), 1);
        let mapping = &profile.mapping[0];
        assert_eq!(profile.string(mapping.filename), "/usr/bin/prog");
        assert!(mapping.has_functions && mapping.has_filenames && mapping.has_line_numbers);
        assert!(profile.location.iter().all(|l| l.mapping_id == 1));
        assert!(profile.location.iter().all(|l| l.address == 0x401000));
        // main at prog.c is one function shared by both stacks.
        let mains = profile
            .function
            .iter()
            .filter(|f| profile.string(f.name) == "main")
            .count();
        assert_eq!(mains, 1);
    }

    #[test]
    fn inlined_frames_join_the_location_they_were_inlined_into() {
        let mut report = fixtures::report();
        let mut inlined = fixtures::frame("helper", Some("prog.h"), Some(3));
        inlined.inlined = true;
        report.sites[0].frames.insert(0, inlined);
        let profile = decode(&render(&report)).unwrap();
        let sample = &profile.sample[0];
        assert_eq!(
            sample.location_id.len(),
            2,
            "helper is inside leak_a's location"
        );
        let leaf = &profile.location[sample.location_id[0] as usize - 1];
        assert_eq!(leaf.line.len(), 2);
        let names: Vec<String> = frames_of(&profile, sample)
            .into_iter()
            .map(|(name, _, _)| name)
            .collect();
        assert_eq!(names, ["helper", "leak_a", "main"]);
        assert!(profile.mapping[0].has_inline_frames);
    }

    #[test]
    fn a_sampled_report_says_so() {
        let mut report = fixtures::report();
        report.sample_bytes = 524288;
        let profile = decode(&render(&report)).unwrap();
        assert_eq!(profile.period, 524288);
        let comments: Vec<&str> = profile.comment.iter().map(|&c| profile.string(c)).collect();
        assert!(
            comments.contains(
                &"sampled: yes, one sample per 524288 bytes allocated on average (values are unbiased estimates)"
            ),
            "{comments:?}"
        );
    }

    #[test]
    fn the_executable_is_the_first_mapping() {
        let mut report = fixtures::report();
        for frame in &mut report.sites[0].frames {
            frame.module = "/lib/x86_64-linux-gnu/libc.so.6".into();
        }
        let profile = decode(&render(&report)).unwrap();
        let files: Vec<&str> = profile
            .mapping
            .iter()
            .map(|m| profile.string(m.filename))
            .collect();
        assert_eq!(files, ["/usr/bin/prog", "/lib/x86_64-linux-gnu/libc.so.6"]);
        assert_eq!(profile.mapping[0].id, 1);
    }

    #[test]
    fn a_site_without_stack_gets_a_placeholder_location() {
        let mut report = fixtures::report();
        report.sites[1].frames.clear();
        let profile = decode(&render(&report)).unwrap();
        let frames = frames_of(&profile, &profile.sample[1]);
        assert_eq!(frames, [(NO_STACK.to_string(), String::new(), 0)]);
    }

    /// A process in a container labels its samples with the container's
    /// id and pod's uid; one outside any container has neither label.
    #[test]
    fn samples_of_a_container_carry_its_id_and_pod() {
        let profile = decode(&render(&fixtures::report_in_containers())).unwrap();
        for sample in &profile.sample {
            assert_eq!(
                profile.string(label(&profile, sample, "container_id").str),
                fixtures::CONTAINER_ID
            );
            assert_eq!(
                profile.string(label(&profile, sample, "pod_uid").str),
                fixtures::POD_UID
            );
        }
        let plain = decode(&render(&fixtures::report())).unwrap();
        let keys: Vec<&str> = plain.sample[0]
            .label
            .iter()
            .map(|l| plain.string(l.key))
            .collect();
        assert_eq!(keys, ["allocator", "pid", "oldest_age"]);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode(b"not gzip").is_err());
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&[0xff; 16]).unwrap();
        assert!(decode(&gz.finish().unwrap()).is_err());
    }
}
