// leaktrace serve's page, kept open: draws each process's and each top call
// site's bytes over time since attach with uPlot (from /api/series),
// refreshes them, the tables (/fragment) and the flamegraph
// (/flamegraph.svg) every data-refresh-ms without reloading, and lets one
// pick a process. Every name in the data comes from a traced process and
// is hostile: it only ever reaches the DOM as text (textContent, new
// Option, uPlot's labels, which it sets as text), never as markup. The
// tables come as markup the server escaped.
"use strict";

(function () {
  const body = document.body;
  const refreshMs = Math.max(250, Number(body.dataset.refreshMs) || 5000);
  let pid = body.dataset.pid || "";
  const plots = {};
  const palette = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
  ];

  /** 4196 -> "4.1 KiB". */
  function human(bytes) {
    if (bytes == null) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = Math.abs(bytes);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    const text = unit === 0 ? String(value) : value.toFixed(1);
    return (bytes < 0 ? "-" : "") + text + " " + units[unit];
  }

  function lastValue(values) {
    for (let i = values.length - 1; i >= 0; i -= 1) {
      if (values[i] != null) return values[i];
    }
    return null;
  }

  function firstValue(values) {
    return values.find((v) => v != null) ?? null;
  }

  function query() {
    return "?pid=" + encodeURIComponent(pid);
  }

  /** Draws `lines` into the element `id`: a new plot when the lines
   * changed, new data otherwise. The legend shows, for each line, the
   * value under the cursor, or its latest without one. */
  function draw(id, data, lines) {
    const element = document.getElementById(id);
    const xs = data.times.map((t) => data.started_unix_ms / 1000 + t);
    const aligned = [xs, ...lines.map((line) => line.values)];
    const key = JSON.stringify([data.pid, lines.map((line) => line.label)]);
    const existing = plots[id];
    if (existing && existing.key === key) {
      existing.plot.setData(aligned);
      return;
    }
    if (existing) existing.plot.destroy();
    element.replaceChildren();
    const series = [{}].concat(
      lines.map((line, i) => ({
        label: line.label,
        stroke: palette[i % palette.length],
        width: 2,
        points: { show: data.times.length < 60 },
        value: (u, value, sidx, idx) =>
          human(idx == null ? lastValue(u.data[sidx]) : value),
      })),
    );
    const options = {
      width: Math.max(300, element.clientWidth),
      height: 280,
      series,
      // Bytes from 0: a leak's slope reads true against it.
      scales: {
        x: { time: true },
        y: { range: (u, min, max) => [0, Math.max(1024, max * 1.1)] },
      },
      axes: [
        {},
        { size: 80, values: (u, splits) => splits.map(human) },
      ],
      legend: { live: true },
    };
    const plot = new uPlot(options, aligned, element);
    plots[id] = { key, plot };
  }

  /** A stack, folded: its innermost frame, the rest on a click. */
  function stackDetails(stack) {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = (stack[0] || "-") + (stack.length > 1 ? " … (" + stack.length + " frames)" : "");
    const frames = document.createElement("pre");
    frames.textContent = stack.join("\n");
    details.append(summary, frames);
    return details;
  }

  /** The table under the charts: each top site's colour, name, bytes now,
   * change since its first point, and stack. */
  function latest(data) {
    const tbody = document.querySelector("#latest tbody");
    // Stacks a person opened stay open across refreshes.
    const open = new Set(
      [...tbody.querySelectorAll("tr")]
        .filter((row) => row.querySelector("details[open]"))
        .map((row) => row.dataset.label),
    );
    const rows = data.site_series.map((line, i) => {
      const row = document.createElement("tr");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = palette[i % palette.length];
      const cells = [
        swatch,
        line.label,
        human(line.bytes),
        (() => {
          const first = firstValue(line.values);
          const change = first == null ? null : line.bytes - first;
          return change == null ? "-" : (change >= 0 ? "+" : "") + human(change);
        })(),
        stackDetails(line.stack),
      ];
      cells.forEach((content, column) => {
        const cell = document.createElement("td");
        if (content instanceof Node) cell.append(content);
        else cell.textContent = content;
        if (column === 2 || column === 3) cell.className = "n";
        if (column === 4) cell.className = "stack";
        row.append(cell);
      });
      row.dataset.bytes = String(line.bytes);
      row.dataset.label = line.label;
      row.querySelector("details").open = open.has(line.label);
      return row;
    });
    tbody.replaceChildren(...rows);
  }

  /** The picker lists the processes traced now (they come and go under
   * --all); the picked one stays listed even when it is gone. */
  function picker(data) {
    const select = document.getElementById("pid");
    if (!select) return;
    const options = [new Option("all", "")];
    for (const process of data.processes) {
      const text = process.pid + " " + process.comm + " (" + human(process.bytes) + ")" +
        (process.exited ? " exited" : "");
      options.push(new Option(text, String(process.pid)));
    }
    if (pid && !data.processes.some((p) => String(p.pid) === pid)) {
      options.push(new Option(pid + " (gone)", pid));
    }
    // The same processes: texts updated in place (an open list stays
    // open); others: a new list.
    const same = select.options.length === options.length &&
      options.every((o, i) => select.options[i].value === o.value);
    if (same) {
      options.forEach((o, i) => {
        if (select.options[i].text !== o.text) select.options[i].text = o.text;
      });
    } else {
      select.replaceChildren(...options);
    }
    select.value = pid;
  }

  /** The report's tables, fresh: markup the server escaped, parsed into
   * an inert document and moved in. */
  async function tables() {
    const response = await fetch("/fragment" + query(), { cache: "no-store" });
    if (!response.ok) throw new Error("/fragment: " + response.status);
    const parsed = new DOMParser().parseFromString(await response.text(), "text/html");
    document.getElementById("report").replaceChildren(...parsed.body.childNodes);
  }

  /** Sizes the flamegraph's object to its SVG's height (its width is the
   * page's: inferno draws "fluid" SVGs). */
  function fit(object) {
    const svg = object.contentDocument && object.contentDocument.documentElement;
    const height = svg && Number(svg.getAttribute("height"));
    if (height) object.style.height = height + "px";
  }

  /** A zoomed flamegraph (inferno puts x= in its own address) is left
   * alone until unzoomed. */
  function zoomed(object) {
    try {
      return /[?&]x=/.test(object.contentWindow.location.search);
    } catch (err) {
      return false;
    }
  }

  /** Loads the flamegraph anew beside the old one and swaps them once it
   * has loaded, so the page does not jump. */
  function flamegraph() {
    const old = document.getElementById("flamegraph");
    if (zoomed(old)) return Promise.resolve();
    return new Promise((resolve) => {
      const next = document.createElement("object");
      next.type = "image/svg+xml";
      next.className = "loading";
      const done = () => {
        fit(next);
        next.className = "";
        next.id = "flamegraph";
        old.replaceWith(next);
        resolve();
      };
      next.addEventListener("load", done, { once: true });
      next.addEventListener("error", () => { next.remove(); resolve(); }, { once: true });
      next.data = "/flamegraph.svg" + query() + "&t=" + Date.now();
      old.after(next);
    });
  }

  let timer = null;
  let updates = 0;

  async function refresh() {
    clearTimeout(timer);
    const status = document.getElementById("status");
    try {
      const response = await fetch("/api/series" + query(), { cache: "no-store" });
      if (!response.ok) throw new Error("/api/series: " + response.status);
      const data = await response.json();
      draw("processes-chart", data, data.process_series);
      draw("sites-chart", data, data.site_series);
      latest(data);
      picker(data);
      await Promise.all([tables(), flamegraph()]);
      updates += 1;
      body.dataset.updates = String(updates);
      status.textContent = "updated " + new Date().toLocaleTimeString();
      status.className = "";
    } catch (err) {
      // serve stopped, or the network went: say so, keep trying.
      status.textContent = "not updated: " + err.message;
      status.className = "failed";
    }
    if (document.getElementById("live").checked) {
      timer = setTimeout(refresh, refreshMs);
    }
  }

  function pick(value) {
    pid = value;
    history.replaceState(null, "", pid ? "/?pid=" + encodeURIComponent(pid) : "/");
    refresh();
  }

  const select = document.getElementById("pid");
  if (select) select.addEventListener("change", () => pick(select.value));
  // The processes table's links pick in place too.
  document.getElementById("report").addEventListener("click", (event) => {
    const link = event.target.closest("a[href^='/?pid=']");
    if (!link) return;
    event.preventDefault();
    pick(new URL(link.href).searchParams.get("pid") || "");
  });
  document.getElementById("live").addEventListener("change", (event) => {
    if (event.target.checked) refresh();
    else clearTimeout(timer);
  });
  window.addEventListener("resize", () => {
    for (const id of Object.keys(plots)) {
      const element = document.getElementById(id);
      plots[id].plot.setSize({ width: Math.max(300, element.clientWidth), height: 280 });
    }
  });
  const first = document.getElementById("flamegraph");
  first.addEventListener("load", () => fit(first), { once: true });
  fit(first);
  refresh();
})();
