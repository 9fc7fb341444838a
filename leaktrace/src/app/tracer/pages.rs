//! What `serve` answers from the tracer: the page, its series, tables and
//! flamegraph (for one process or all), pprof and metrics, each made from
//! a report of now: at most [`PAGE_REPORT_AGE`] old, so that requests in a
//! burst (the page's three, a scrape, a client looping) symbolize the
//! sites once between them.
use std::{
    rc::Rc,
    time::{Duration, Instant, UNIX_EPOCH},
};

use anyhow::Result;

use super::Tracer;
use crate::{
    app::{
        connections,
        http::{self, Page},
    },
    report::{
        self, Report,
        html::{self, PageOptions},
        series::{self, SeriesInput},
        svg,
    },
};

/// How long one report serves every request: the page's script asks for
/// the series, the tables and the flamegraph together, a scrape may come
/// at the same time, and a report of a busy host (every site symbolized)
/// is worth making once for all of them. `leaktrace_reports_built_total`
/// in /metrics counts the reports made.
const PAGE_REPORT_AGE: Duration = Duration::from_millis(900);

impl Tracer {
    /// The response to a request for `page` (serve): status, content type
    /// and body, from the current report; `http` is what the HTTP side
    /// refused, for /metrics.
    pub(in crate::app) fn page(
        &mut self,
        page: Page,
        http: &connections::Counters,
    ) -> Result<http::Response> {
        if let Some(response) = http::local_response(page) {
            return Ok(response);
        }
        let top = self.options.top;
        Ok(match page {
            // Answered above.
            Page::NotFound | Page::Asset(_) | Page::BadMethod | Page::BadRequest => {
                ("404 Not Found", "text/plain", b"not found\n".to_vec())
            }
            Page::Heap => (
                "200 OK",
                "application/octet-stream",
                report::pprof::render(&*self.page_report()?),
            ),
            Page::Metrics => {
                let mut text = report::metrics::render(
                    &*self.page_report()?,
                    report::metrics::own_rss_bytes(),
                );
                text.push_str(&self.serve_metrics());
                text.push_str(&http.render());
                ("200 OK", "text/plain; version=0.0.4", text.into_bytes())
            }
            Page::Index { pid } => {
                let options = PageOptions {
                    top,
                    pid,
                    refresh_ms: self.options.page_refresh.as_millis() as u64,
                };
                (
                    "200 OK",
                    "text/html; charset=utf-8",
                    html::page(&*self.page_report()?, &options).into_bytes(),
                )
            }
            Page::Fragment { pid } => (
                "200 OK",
                "text/html; charset=utf-8",
                html::fragment(&*self.page_report()?, top, pid).into_bytes(),
            ),
            Page::Flamegraph { pid } => (
                "200 OK",
                "image/svg+xml",
                svg::render(&series::for_pid(&*self.page_report()?, pid)).into_bytes(),
            ),
            Page::Series { pid } => {
                let report = self.page_report()?;
                let series = series::build(&SeriesInput {
                    report: &report,
                    history: &self.history,
                    pid,
                    top,
                    started_unix_ms: self
                        .started_wall
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64,
                    refresh_ms: self.options.page_refresh.as_millis() as u64,
                });
                ("200 OK", "application/json", serde_json::to_vec(&series)?)
            }
        })
    }

    /// `serve`'s own counters, Prometheus text.
    fn serve_metrics(&self) -> String {
        format!(
            "# HELP leaktrace_reports_built_total Reports made (each symbolizes every site); serve makes one per {} ms at most.\n# TYPE leaktrace_reports_built_total counter\nleaktrace_reports_built_total {}\n",
            PAGE_REPORT_AGE.as_millis(),
            self.reports_built
        )
    }

    /// A report of now for the page, or the one made less than
    /// [`PAGE_REPORT_AGE`] ago. Each new one is also a point of the
    /// history: an open page draws a point at every refresh (at most about
    /// one a second), at no cost beyond the report it needed anyway.
    fn page_report(&mut self) -> Result<Rc<Report>> {
        if let Some((made, report)) = &self.page_report
            && made.elapsed() < PAGE_REPORT_AGE
        {
            return Ok(report.clone());
        }
        let report = Rc::new(self.report(false)?);
        self.keep_page_report(report.clone());
        Ok(report)
    }

    /// Whether answering `page` needs a report newer than the one kept:
    /// the event loop then has one made (symbolized off the loop) and
    /// [`Tracer::keep_page_report`] before it asks for the page.
    pub(in crate::app) fn page_needs_report(&self, page: Page) -> bool {
        let needs = match page {
            Page::NotFound | Page::Asset(_) | Page::BadMethod | Page::BadRequest => false,
            page => http::local_response(page).is_none(),
        };
        let kept_fresh = self
            .page_report
            .as_ref()
            .is_some_and(|(made, _)| made.elapsed() < PAGE_REPORT_AGE);
        needs && !kept_fresh
    }

    /// Keeps `report` for the page's requests of the next
    /// [`PAGE_REPORT_AGE`], a point of the history.
    pub(in crate::app) fn keep_page_report(&mut self, report: Rc<Report>) {
        self.history.record(
            report.elapsed_ms as f64 / 1000.0,
            &series::site_bytes(&report),
        );
        self.page_report = Some((Instant::now(), report));
    }
}
