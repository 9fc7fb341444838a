//! `leaktrace serve`'s page in a real browser: Debian's chromium, headless,
//! driven over `WebDriver` (chromedriver, with the thirtyfour crate). serve
//! traces the slow-leak fixture (5000 bytes kept every 10 ms in
//! `grow_cache`) and an idle `sleep`; the test loads `/`, picks the leaking
//! process in the picker, and checks what is drawn: uPlot's canvas with
//! pixels of the site's line, its legend naming `grow_cache (slow_leak.c:N)`
//! with a non-zero value, the process picker listing both pids, the
//! flamegraph's SVG as wide as the page and naming `grow_cache`, no script
//! but the page's own; then that the latest value grew after a refresh. A
//! screenshot is kept (its path is printed).
mod common;

use std::{
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Guarded, Server, TempDir, compile, require_root, require_tool, serial, start_serve};
use serde_json::Value;
use thirtyfour::{components::SelectElement, prelude::*};

const TEST: &str = "the_page_draws_the_leak_over_time_in_a_browser";

/// Debian's chromium binary and its `WebDriver` server.
const CHROMIUM: &str = "chromium";
const CHROMEDRIVER: &str = "chromedriver";

#[test]
fn the_page_draws_the_leak_over_time_in_a_browser() {
    if !require_root(TEST) {
        return;
    }
    for (tool, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        let hint = format!("apt-get install {package}; cargo xtask test installs it");
        if !require_tool(TEST, tool, &hint) {
            return;
        }
    }
    let _serial = serial();
    let dir = TempDir::new("page");
    let program = compile(
        &dir,
        "slow_leak.c",
        "slow_leak",
        &["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline"],
    );
    let leak = Guarded::spawn("slow_leak", Command::new(&program).stdin(Stdio::null()));
    let idle = Guarded::spawn(
        "sleep",
        Command::new("sleep").arg("600").stdin(Stdio::null()),
    );
    let pids = format!("{},{}", leak.pid(), idle.pid());
    let Server {
        process: _server,
        stderr,
        address,
        ..
    } = start_serve(&[
        "--pid",
        &pids,
        "--mode",
        "allocations",
        "--sample-bytes",
        "0",
        "--refresh",
        "1s",
    ]);
    stderr
        .wait_for(Duration::from_mins(1), |l| {
            l.starts_with("leaktrace: tracing pid ")
        })
        .unwrap_or_else(|e| panic!("never attached: {e}"));
    let driver_port = free_port();
    let mut chromedriver = Guarded::spawn(
        CHROMEDRIVER,
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let driver_out = chromedriver.stdout_lines();
    driver_out
        .wait_for(Duration::from_secs(30), |l| {
            l.contains("started successfully")
        })
        .unwrap_or_else(|e| panic!("chromedriver did not start: {e}"));
    let screenshot = dir.join("page.png");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(drive(
        &format!("http://127.0.0.1:{driver_port}"),
        &address,
        leak.pid(),
        idle.pid(),
        &screenshot,
    ));
    // The screenshot outlives the temporary directory, for a person to look.
    let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page.png");
    if std::fs::copy(&screenshot, &kept).is_ok() {
        // Past the harness's capture: a passing test's output shows it too.
        let _: std::io::Result<()> = std::io::stderr()
            .write_all(format!("page screenshot: {}\n", kept.display()).as_bytes());
    }
    if let Err(err) = outcome {
        panic!("{err}\nserve's stderr:\n{}", stderr.text());
    }
}

/// Drives the page; Err says what was not as expected.
async fn drive(
    webdriver: &str,
    address: &str,
    leak: u32,
    idle: u32,
    screenshot: &Path,
) -> Result<(), String> {
    let mut caps = DesiredCapabilities::chrome();
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
    ] {
        caps.add_arg(arg).map_err(|e| e.to_string())?;
    }
    let driver = WebDriver::new(webdriver, caps)
        .await
        .map_err(|e| format!("starting {CHROMIUM} through {CHROMEDRIVER}: {e}"))?;
    let result = check_page(&driver, address, leak, idle, screenshot).await;
    if result.is_err() {
        let _: WebDriverResult<()> = driver.screenshot(screenshot).await;
    }
    let _: WebDriverResult<()> = driver.quit().await;
    result
}

async fn check_page(
    driver: &WebDriver,
    address: &str,
    leak: u32,
    idle: u32,
    screenshot: &Path,
) -> Result<(), String> {
    let err = |e: WebDriverError| e.to_string();
    driver
        .goto(format!("http://{address}/"))
        .await
        .map_err(err)?;
    let first = wait_for_update(driver, 0).await?;

    // The picker lists both processes; picking the leak redraws for it.
    let options: Vec<String> = script(
        driver,
        "return [...document.querySelectorAll('#pid option')].map(o => o.value);",
    )
    .await?
    .as_array()
    .map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    })
    .unwrap_or_default();
    for pid in [leak, idle] {
        if !options.contains(&pid.to_string()) {
            return Err(format!("pid {pid} not in the picker: {options:?}"));
        }
    }
    let select = SelectElement::new(&driver.find(By::Id("pid")).await.map_err(err)?)
        .await
        .map_err(err)?;
    select
        .select_by_value(&leak.to_string())
        .await
        .map_err(err)?;
    let picked = wait_for_update(driver, first).await?;
    let url = driver.current_url().await.map_err(err)?;
    if url.query() != Some(&format!("pid={leak}")) {
        return Err(format!("picking did not put the pid in the address: {url}"));
    }

    // The chart: uPlot's canvas, with pixels of the first line's colour.
    // A line across the chart (a point a refresh), not one dot: on a slow
    // machine the first refreshes may hold two or three points, a short
    // line, so more refreshes are waited for (each adds a point).
    let mut updates = picked;
    let mut drawn = count_red_pixels(driver).await?;
    for _ in 0..8 {
        if drawn >= 150 {
            break;
        }
        updates = wait_for_update(driver, updates).await?;
        drawn = count_red_pixels(driver).await?;
    }
    if drawn < 150 {
        return Err(format!(
            "no line drawn on the sites chart ({drawn} red pixels after {updates} updates)"
        ));
    }
    // Its legend names the site and shows its latest value.
    let legend = legend(driver).await?;
    let Some((label, value)) = legend
        .iter()
        .find(|(l, _)| l.starts_with("grow_cache (slow_leak.c:"))
    else {
        return Err(format!("no grow_cache in the legend: {legend:?}"));
    };
    if value.is_empty() || value == "--" || value.starts_with("0 ") {
        return Err(format!(
            "{label}: no latest value in the legend ({value:?})"
        ));
    }
    let before = latest_bytes(driver).await?;
    if before == 0 {
        return Err("the latest value is 0".into());
    }

    // The flamegraph: an SVG as wide as the page, naming the leak.
    let flamegraph = script(
        driver,
        "const object = document.getElementById('flamegraph');
         const svg = object.contentDocument && object.contentDocument.documentElement;
         return {
           page: document.body.clientWidth,
           object: object.getBoundingClientRect().width,
           tag: svg ? svg.tagName : null,
           svg: svg ? svg.getBoundingClientRect().width : 0,
           text: svg ? svg.textContent : '',
         };",
    )
    .await?;
    let width = |key: &str| flamegraph[key].as_f64().unwrap_or(0.0);
    if flamegraph["tag"] != "svg"
        || width("object") < width("page") - 2.0
        || width("svg") < width("page") - 2.0
        || !flamegraph["text"]
            .as_str()
            .is_some_and(|t| t.contains("grow_cache"))
    {
        return Err(format!(
            "the flamegraph is not an SVG as wide as the page naming grow_cache: {}",
            Value::to_string(&flamegraph)
                .chars()
                .take(400)
                .collect::<String>()
        ));
    }

    // Only the page's own scripts run in it.
    let scripts = script(
        driver,
        "return [...document.scripts].map(s => s.getAttribute('src'));",
    )
    .await?;
    if scripts != serde_json::json!(["/assets/uPlot.iife.min.js", "/assets/page.js"]) {
        return Err(format!("unexpected scripts: {scripts}"));
    }

    // A refresh later, the leak has grown, and the legend says so.
    wait_for_update(driver, updates + 1).await?;
    let after = latest_bytes(driver).await?;
    if after <= before {
        return Err(format!(
            "the latest value did not grow: {before} then {after}"
        ));
    }
    let status = driver
        .find(By::Id("status"))
        .await
        .map_err(err)?
        .text()
        .await
        .map_err(err)?;
    if !status.starts_with("updated") {
        return Err(format!("the page says {status:?}"));
    }
    driver.screenshot(screenshot).await.map_err(err)
}

/// Runs `body` in the page and returns what it returned.
async fn script(driver: &WebDriver, body: &str) -> Result<Value, String> {
    driver
        .execute(body, Vec::new())
        .await
        .map(|ret| ret.json().clone())
        .map_err(|e| format!("script failed: {e}\n{body}"))
}

/// Pixels of the first line's colour on the sites chart (uPlot's canvas);
/// -1 without a canvas.
async fn count_red_pixels(driver: &WebDriver) -> Result<i64, String> {
    let drawn = script(
        driver,
        "const canvas = document.querySelector('#sites-chart canvas');
         if (!canvas) return -1;
         const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
         let red = 0;
         for (let i = 0; i < data.length; i += 4)
           if (data[i] > 180 && data[i + 1] < 90 && data[i + 2] < 90 && data[i + 3] > 0) red += 1;
         return red;",
    )
    .await?;
    Ok(drawn.as_i64().unwrap_or(-1))
}

/// Waits (30 s at most) until the page has refreshed more than `after`
/// times; returns its count.
async fn wait_for_update(driver: &WebDriver, after: u64) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = script(
            driver,
            "return [Number(document.body.dataset.updates || 0), document.getElementById('status').textContent];",
        )
        .await?;
        let updates = state[0].as_u64().unwrap_or(0);
        if updates > after {
            return Ok(updates);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the page did not refresh past {after} updates in 30 s (status: {})",
                state[1]
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sites chart's legend: each line's label and the value it shows.
async fn legend(driver: &WebDriver) -> Result<Vec<(String, String)>, String> {
    let rows = script(
        driver,
        "return [...document.querySelectorAll('#sites-chart .u-legend .u-series')].slice(1)
           .map(row => [row.querySelector('.u-label').textContent,
                        row.querySelector('.u-value').textContent]);",
    )
    .await?;
    Ok(rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
            (text(0), text(1))
        })
        .collect())
}

/// The bytes now of the top site, from the table under the charts.
async fn latest_bytes(driver: &WebDriver) -> Result<u64, String> {
    let bytes = script(
        driver,
        "const row = document.querySelector('#latest tbody tr');
         return row ? row.dataset.bytes : null;",
    )
    .await?;
    bytes
        .as_str()
        .and_then(|b| b.parse().ok())
        .ok_or_else(|| format!("no top site under the charts ({bytes})"))
}

/// A port nobody listens on now, for chromedriver.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
