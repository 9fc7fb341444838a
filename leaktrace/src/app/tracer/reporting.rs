//! The tracer's reports: what it knows made into a `Report` (sites
//! symbolized, processes, losses, the runtimes' views), written at each
//! interval and at the end, and the growth samples the ranking and the
//! page's history are made of.
use leaktrace_common::AllocFn;

use super::*;
use crate::symbolize::{Resolved, Wanted};

impl Tracer {
    /// A report of now, symbolized here (on the caller's thread); the event
    /// loop instead makes one in steps ([`Tracer::prepare_report`],
    /// [`Tracer::symbols_wanted`] resolved off the loop,
    /// [`Tracer::assemble_report`]).
    pub(in crate::app) fn report(&mut self, is_final: bool) -> Result<report::Report> {
        self.prepare_report();
        self.assemble_report(is_final)
    }

    /// A report's first step: what the runtimes hold read from the
    /// processes (once per report: the reads are counted).
    pub(in crate::app) fn prepare_report(&mut self) {
        self.reports_built += 1;
        let pids: Vec<u32> = self.processes.keys().copied().collect();
        for pid in pids {
            self.update_runtime(pid);
        }
        self.read_live_state();
    }

    /// The sites a report of now shows, most bytes first.
    fn report_totals(&mut self) -> Vec<aggregate::SiteTotal> {
        let mut totals = aggregate::outstanding_by_site(
            &self.pipeline.table,
            monotonic_ns(),
            self.options.min_age.as_nanos() as u64,
            u64::from(self.options.sample_mean()),
            self.options.page_sample(),
        );
        self.add_go_heap(&mut totals);
        totals
    }

    /// The addresses a report of now would symbolize that the symbolizer's
    /// cache lacks: resolved elsewhere and [`Tracer::symbols_resolved`],
    /// they make [`Tracer::assemble_report`] only read the cache.
    pub(in crate::app) fn symbols_wanted(&mut self) -> Wanted {
        let totals = self.report_totals();
        let mut wanted = Wanted::default();
        let maps: BTreeMap<u32, MutexGuard<'_, ProcessMaps>> = self
            .processes
            .iter()
            .map(|(&pid, process)| (pid, process.maps.lock().expect("maps lock")))
            .collect();
        let unknown = ProcessMaps::from_mappings(0, Vec::new());
        let maps_of = |pid| maps.get(&pid).map_or(&unknown, |m| &**m);
        for total in &totals {
            let site = self.pipeline.sites.get(total.site);
            // As report::build looks them up.
            self.symbolizer.wanted(
                maps_of(site.pid),
                &site.stack,
                site.func == AllocFn::PageFault,
                &mut wanted,
            );
        }
        let symbolizer = &self.symbolizer;
        self.goroutines.rows(self.options.growth(), &mut |pid, pc| {
            symbolizer.wanted(maps_of(pid), &[pc], false, &mut wanted);
            Vec::new()
        });
        wanted
    }

    /// Merges addresses resolved off the loop into the symbolizer's cache.
    pub(in crate::app) fn symbols_resolved(&mut self, resolved: Resolved) {
        self.symbolizer.insert(resolved);
    }

    /// A report's last step, from what [`Tracer::prepare_report`] read:
    /// every site symbolized (from the cache when its addresses were
    /// resolved beforehand).
    pub(in crate::app) fn assemble_report(&mut self, is_final: bool) -> Result<report::Report> {
        let growth_mode = self.options.growth();
        let min_age = self.options.min_age;
        let totals = self.report_totals();
        let pipeline = &self.pipeline;
        let kernel = self.kernel.losses()?;
        let losses = Losses {
            ring_buffer_full: kernel.ring_buffer_full,
            entry_slot_collisions: kernel.entry_slot_collisions,
            stack_capture_failed: kernel.stack_capture_failed,
            return_without_entry: kernel.return_without_entry,
            sampled_map_full: kernel.sampled_map_full,
            table_full: pipeline.table.stats.dropped_at_cap,
            decode_errors: pipeline.decode_errors,
            huge_page_checks_skipped: self.huge_pages.skipped,
            abandoned_calls: kernel.abandoned_calls,
            total: 0,
            releases_lost: kernel.releases_lost,
            overstated_bytes_max: aggregate::overstated_bytes_max(
                &pipeline.table,
                kernel.releases_lost,
                u64::from(self.options.sample_mean()),
                self.options.page_sample(),
            ),
        }
        .totalled();
        let allocator_objects = self
            .objects()
            .iter()
            .map(|o| o.display_path.clone())
            .collect();
        let maps: BTreeMap<u32, MutexGuard<'_, ProcessMaps>> = self
            .processes
            .iter()
            .map(|(&pid, process)| (pid, process.maps.lock().expect("maps lock")))
            .collect();
        let processes = self
            .processes
            .iter()
            .map(|(&pid, process)| ProcessInput {
                pid,
                command: process.command.clone(),
                exited: process.exited,
                runtime: process.runtime.clone().map(|runtime| RuntimeReport {
                    walks: pipeline.python_walks.get(pid).unwrap_or_default(),
                    go_heap: self.go_heap.report(pid),
                    ..runtime
                }),
                rss_growth_bytes: process.rss_growth(growth_mode),
                cgroup: process.cgroup.clone(),
                parent: self.children.parent(pid),
            })
            .collect();
        let symbolizer = &mut self.symbolizer;
        let unknown = ProcessMaps::from_mappings(0, Vec::new());
        let (goroutines, goroutine_reads) = self.goroutines.rows(growth_mode, &mut |pid, pc| {
            let maps = maps.get(&pid).map_or(&unknown, |m| &**m);
            symbolizer.symbolize_stack(maps, &[pc], 0, false)
        });
        Ok(report::build(
            ReportInput {
                growth_mode: self.options.growth(),
                processes,
                all_processes: matches!(self.targets, Targets::All(_)),
                exited_processes: self.exited_processes,
                children_not_followed: self.children.not_followed,
                command: match &self.targets {
                    Targets::Command(words) => Some(words.clone()),
                    _ => None,
                },
                allocator_objects,
                elapsed: self.started.elapsed(),
                is_final,
                min_age,
                sample_bytes: u64::from(self.options.sample_mean()),
                page_sample: self.options.page_sample(),
                stats: pipeline.table.stats,
                events: pipeline.events,
                execs: pipeline.execs,
                losses,
                kernel_sampled_blocks: self.kernel_sampled_blocks,
                totals: &totals,
                sites: &pipeline.sites,
                growth: &self.growth,
                python_types: self.python_objects.rows(),
                goroutines,
                goroutine_reads,
            },
            &|pid| maps.get(&pid).map(|m| &**m),
            &mut self.symbolizer,
            &mut |pid, native, python| self.python_frames.splice(pid, native, python),
        ))
    }

    /// Writes `report` where the options say (and, for the final one, the
    /// folded stacks and the summary on stderr).
    pub(in crate::app) fn write_report(&self, report: &report::Report) -> Result<()> {
        let is_final = report.is_final;
        let options = &self.options;
        let rendered = report::render_bytes(report, options.format, options.top);
        if let Some(path) = &options.output {
            write_atomically(path, &rendered)?;
        } else {
            let mut stdout = std::io::stdout().lock();
            let separator = if options.format == Format::Text && !is_final {
                "\n"
            } else {
                ""
            };
            stdout.write_all(&rendered)?;
            stdout.write_all(separator.as_bytes())?;
            stdout.flush()?;
        }
        if is_final && let Some(path) = &options.folded {
            write_atomically(path, report::render(report, Format::Folded, 0))?;
        }
        if is_final && !options.quiet {
            eprintln!(
                "leaktrace: {} bytes outstanding in {} allocations at {} call sites; {}",
                report.totals.outstanding_bytes,
                report.totals.outstanding_allocations,
                report.totals.call_sites,
                report.losses.summary()
            );
            if let Some(overstatement) = report.losses.overstatement() {
                eprintln!("leaktrace: {overstatement}");
            }
            let usage = own_usage();
            eprintln!(
                "leaktrace: the daemon used {} ms of CPU and {} MiB of memory at most",
                usage.cpu_ms, usage.max_rss_mib
            );
        }
        Ok(())
    }

    /// Samples every site's outstanding bytes for the growth ranking and
    /// the page's history.
    pub(in crate::app) fn record_growth(&mut self) {
        self.find_given_back(given_back::Look::Paced);
        let mut totals = aggregate::outstanding_by_site(
            &self.pipeline.table,
            monotonic_ns(),
            0,
            u64::from(self.options.sample_mean()),
            self.options.page_sample(),
        );
        self.add_go_heap(&mut totals);
        let seconds = self.started.elapsed().as_secs_f64();
        self.growth.record(seconds, &totals);
        let now: Vec<SiteBytes> = totals
            .iter()
            .map(|total| SiteBytes {
                site: total.site,
                pid: self.pipeline.sites.get(total.site).pid,
                bytes: total.bytes,
            })
            .collect();
        self.history.record(seconds, &now);
        self.forget_idle_sites(seconds, &totals);
        self.sweep_sampled();
    }

    /// Adds the Go heap sites read last to `totals`, keeping the order
    /// (most bytes first).
    fn add_go_heap(&mut self, totals: &mut Vec<aggregate::SiteTotal>) {
        let go = self.go_heap.totals(&mut self.pipeline.sites);
        if go.is_empty() {
            return;
        }
        totals.extend(go);
        totals.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(b.count.cmp(&a.count))
                .then(a.site.cmp(&b.site))
        });
    }
}
