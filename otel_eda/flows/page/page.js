/* otel-eda's flow page: a causation graph, a timeline and a service graph of one flow,
 * drawn from the JSON of `otel-eda flow --json` (embedded in the page, or fetched from
 * `otel-eda serve`'s /api/flows). No network access beyond that API. */
(function () {
  "use strict";

  const STATUS_COLOURS = {
    completed: "#2e9d4f",
    failed: "#d93025",
    dead_lettered: "#8b0000",
    rejected: "#b03ab0",
    retried: "#e8a317",
    in_progress: "#e8a317",
    unknown: "#9aa0a6",
    published: "#9aa0a6",
    missing: "#bdbdbd",
  };
  const SEVERITY = ["dead_lettered", "failed", "rejected", "retried", "in_progress", "unknown", "published", "completed"];
  /* siblings of one type and status beyond this many are drawn as one group node (click opens it) */
  const GROUP_AT = 12;
  /* a causation chain (each event the only one its cause caused) longer than CHAIN_AT is drawn
   * as its first and last CHAIN_KEEP events around one group node (click opens it) */
  const CHAIN_AT = 200;
  const CHAIN_KEEP = 20;
  const NODE_W = 180;
  const NODE_H = 34;
  const ROW = 44;
  const COLUMN = 230;
  const LANES_MAX = 8;
  const LANE_H = 14;

  const colour = (status) => STATUS_COLOURS[status] || STATUS_COLOURS.unknown;
  const worst = (statuses) => {
    let best = "completed";
    for (const s of statuses) if (SEVERITY.indexOf(s) < SEVERITY.indexOf(best)) best = s;
    return best;
  };
  const words = (status) => String(status).replace("_", "-");
  const ms = (seconds) =>
    seconds === null || seconds === undefined
      ? "?"
      : seconds < 1
        ? (seconds * 1000).toFixed(1) + " ms"
        : seconds < 120
          ? seconds.toFixed(2) + " s"
          : (seconds / 60).toFixed(1) + " min";
  const short = (text, n) => (text && text.length > n ? text.slice(0, n - 1) + "…" : text || "");
  const iso = (ns) => (ns ? new Date(Number(BigInt(ns) / 1000000n)).toISOString() : "?");

  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  };

  const state = { document: null, flow: null, index: 0, expanded: new Set(), selected: null, byId: new Map() };

  function setStatus(text, error) {
    const line = document.getElementById("status-line");
    line.textContent = text;
    line.classList.toggle("error", Boolean(error));
  }

  // -- a flow's summary -----------------------------------------------------------------------------

  function showSummary(flow) {
    const box = document.getElementById("summary");
    box.replaceChildren();
    const keys = flow.business_keys.join(", ");
    box.append(
      el(
        "div",
        { class: "title" },
        keys ? keys + "  " : "",
        el("span", { class: "badge", style: "background:" + colour(flow.status) }, words(flow.status)),
        " correlation id " + flow.correlation_id,
      ),
    );
    const facts = [
      flow.events.length + " events",
      flow.services.length + " services (" + flow.services.join(", ") + ")",
      "wall " + ms(flow.wall_s),
      "started " + iso(flow.start_ns),
    ];
    if (flow.critical_path.length) {
      facts.push(
        "critical path " +
          flow.critical_path.map((s) => s.event_type + (s.subscriber ? "@" + s.subscriber : "")).join(" → "),
      );
    }
    if (flow.gaps) facts.push(flow.gaps + " gap" + (flow.gaps === 1 ? "" : "s") + " (missing spans)");
    if (flow.stray_spans && flow.stray_spans.length) {
      const names = [...new Set(flow.stray_spans.map((s) => s.name))].sort().slice(0, 5).join(", ");
      facts.push(flow.stray_spans.length + " spans outside any handling (" + names + ")");
    }
    box.append(el("div", { class: "facts", id: "facts" }, facts.join(" · ")));
  }

  // -- the causation graph ------------------------------------------------------------------------

  /* The causation tree: every event under its cause (a missing cause is a placeholder node),
   * siblings of one type and status grouped when there are many of them. */
  function causationTree(flow) {
    const ids = new Set(flow.events.map((e) => e.event_id));
    const missing = new Set(flow.missing_events);
    const children = new Map();
    const add = (parent, item) => {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(item);
    };
    for (const event of flow.events) {
      const cause = event.causation_id;
      add(cause !== null && (ids.has(cause) || missing.has(cause)) ? cause : "", { kind: "event", event });
    }
    for (const id of flow.missing_events) add("", { kind: "missing", id });
    const grouped = (parentId, items) => {
      const groups = new Map();
      for (const item of items) {
        const key = item.kind === "event" ? item.event.event_type + "|" + item.event.status : "missing|" + item.id;
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(item);
      }
      const out = [];
      for (const [key, members] of groups) {
        const groupId = parentId + "|" + key;
        if (members.length > GROUP_AT && !state.expanded.has(groupId)) {
          out.push({ kind: "group", id: groupId, members, children: [] });
        } else out.push(...members);
      }
      return out;
    };
    // Iteratively (a causation chain may be thousands of events deep), each event once. Events
    // that no root leads to (a cycle of causes, in damaged data) hang under the root too.
    const idOf = (item) => (item.kind === "event" ? item.event.event_id : item.id);
    const reachable = new Set();
    const reach = (id) => {
      const stack = [id];
      while (stack.length) {
        for (const item of children.get(stack.pop()) || []) {
          if (!reachable.has(idOf(item))) {
            reachable.add(idOf(item));
            stack.push(idOf(item));
          }
        }
      }
    };
    reach("");
    const tops = [...(children.get("") || [])];
    for (const event of flow.events) {
      if (reachable.has(event.event_id)) continue;
      reachable.add(event.event_id);
      tops.push({ kind: "event", event });
      reach(event.event_id);
    }
    const root = { kind: "root", id: "", children: [] };
    const placed = new Set();
    const stack = [[root, tops]];
    while (stack.length) {
      const [node, items] = stack.pop();
      const fresh = items.filter((item) => !placed.has(idOf(item)));
      fresh.forEach((item) => placed.add(idOf(item)));
      node.children = grouped(node.id, fresh).map((item) =>
        item.kind === "group" ? item : { ...item, id: idOf(item), children: [] },
      );
      for (const child of node.children) {
        if (child.kind !== "group") stack.push([child, children.get(child.id) || []]);
      }
    }
    collapseChains(root);
    return root;
  }

  /* Long runs of single-child events become their two ends and a group node between them
   * (iteratively: a chain may be thousands of events deep). */
  function collapseChains(root) {
    const stack = [root];
    while (stack.length) {
      for (const start of stack.pop().children) {
        if (start.kind !== "event") {
          stack.push(start);
          continue;
        }
        const run = [start];
        let end = start;
        while (end.children.length === 1 && end.children[0].kind === "event") {
          end = end.children[0];
          run.push(end);
        }
        const groupId = "chain|" + run[Math.min(CHAIN_KEEP, run.length - 1)].id;
        if (run.length > CHAIN_AT && !state.expanded.has(groupId)) {
          const middle = run.slice(CHAIN_KEEP, run.length - CHAIN_KEEP);
          const worst = SEVERITY.find((status) => middle.some((n) => n.event.status === status)) || "unknown";
          run[CHAIN_KEEP - 1].children = [
            { kind: "group", chain: true, status: worst, id: groupId, members: middle, children: [run[run.length - CHAIN_KEEP]] },
          ];
        }
        stack.push(end);
      }
    }
  }

  function drawCausation(flow) {
    const svg = d3.select("#causation");
    svg.selectAll("*").remove();
    const root = d3.hierarchy(causationTree(flow), (d) => d.children);
    d3.tree().nodeSize([ROW, COLUMN]).separation(() => 1)(root);
    const nodes = root.descendants().filter((d) => d.data.kind !== "root");
    const links = root.links().filter((l) => l.source.data.kind !== "root");
    const canvas = svg.append("g").attr("class", "canvas");
    canvas
      .append("g")
      .selectAll("path")
      .data(links)
      .join("path")
      .attr("class", (l) => "edge" + (l.target.data.kind === "missing" ? " to-missing" : ""))
      .attr(
        "d",
        d3
          .linkHorizontal()
          .source((l) => [l.source.y + NODE_W, l.source.x])
          .target((l) => [l.target.y, l.target.x])
          .x((p) => p[0])
          .y((p) => p[1]),
      );
    const node = canvas
      .append("g")
      .selectAll("g")
      .data(nodes)
      .join("g")
      .attr("class", (d) => "node " + d.data.kind)
      .attr("transform", (d) => "translate(" + d.y + "," + (d.x - NODE_H / 2) + ")")
      .attr("data-event-id", (d) => (d.data.kind === "event" ? d.data.id : null))
      .attr("data-missing-event-id", (d) => (d.data.kind === "missing" ? d.data.id : null))
      .attr("data-group-size", (d) => (d.data.kind === "group" ? d.data.members.length : null))
      .attr("tabindex", 0)
      .on("click", (_, d) => clickNode(d.data))
      .on("keydown", (e, d) => {
        if (e.key === "Enter") clickNode(d.data);
      });
    node
      .append("rect")
      .attr("width", NODE_W)
      .attr("height", NODE_H)
      .attr("fill", (d) => nodeColour(d.data));
    node
      .append("text")
      .attr("x", 8)
      .attr("y", 14)
      .text((d) => nodeTitle(d.data));
    node
      .append("text")
      .attr("class", "sub")
      .attr("x", 8)
      .attr("y", 27)
      .text((d) => nodeSubtitle(d.data));
    node.append("title").text((d) => nodeTitle(d.data) + "\n" + nodeSubtitle(d.data));
    markSelected();

    const box = svg.node().getBoundingClientRect();
    const [x0, x1] = d3.extent(nodes, (d) => d.x);
    const [y0, y1] = d3.extent(nodes, (d) => d.y);
    const width = (y1 || 0) - (y0 || 0) + NODE_W + 40;
    const height = (x1 || 0) - (x0 || 0) + NODE_H + 40;
    const fit = Math.min(1.2, box.width / width, box.height / height);
    const scale = Math.max(fit, 0.45); // never smaller than readable: pan for the rest
    const zoom = d3
      .zoom()
      .scaleExtent([0.05, 3])
      .on("zoom", (e) => canvas.attr("transform", e.transform));
    svg.call(zoom);
    const top = fit < 0.45 ? root.x - box.height / 2 / scale : (x0 || 0) - 20 - (box.height / scale - height) / 2;
    svg.call(zoom.transform, d3.zoomIdentity.scale(scale).translate(20 - (y0 || 0), -top));
  }

  function nodeColour(data) {
    if (data.kind === "event") return colour(data.event.status);
    if (data.kind === "group" && data.chain) return colour(data.status);
    if (data.kind === "group") return colour(data.members[0].kind === "event" ? data.members[0].event.status : "missing");
    return "#fff";
  }

  function nodeTitle(data) {
    if (data.kind === "event") return short(data.event.event_type, 24);
    if (data.kind === "group" && data.chain) return "⋯ a chain of " + data.members.length;
    if (data.kind === "group") return short(data.members[0].event.event_type, 18) + " ×" + data.members.length;
    return "⋯ event missing";
  }

  function nodeSubtitle(data) {
    if (data.kind === "event") {
      const e = data.event;
      return short((e.publisher ? "from " + e.publisher : "publish span missing") + " · " + words(e.status), 30);
    }
    if (data.kind === "group") return "click to show all " + data.members.length;
    return short(data.id, 30);
  }

  function clickNode(data) {
    if (data.kind === "group") {
      state.expanded.add(data.id);
      drawCausation(state.flow);
      return;
    }
    if (data.kind === "event") select(data.event.event_id);
    if (data.kind === "missing") showMissing(data.id);
  }

  function markSelected() {
    d3.selectAll("#causation .node").classed("selected", (d) => d.data.kind === "event" && d.data.id === state.selected);
  }

  // -- details ------------------------------------------------------------------------------------

  function select(eventId) {
    state.selected = eventId;
    markSelected();
    showDetails(state.byId.get(eventId));
    drawTimelineNow();
  }

  function table(rows) {
    const t = el("table");
    for (const [name, value] of rows) {
      if (value === null || value === undefined || value === "") continue;
      t.append(el("tr", {}, el("th", {}, name), el("td", {}, String(value))));
    }
    return t;
  }

  function attributes(values) {
    const rows = Object.keys(values)
      .sort()
      .map((k) => [k, typeof values[k] === "object" ? JSON.stringify(values[k]) : values[k]]);
    const t = table(rows);
    t.classList.add("attributes");
    return t;
  }

  function showMissing(id) {
    const box = document.getElementById("details");
    box.replaceChildren(
      el("h3", {}, "⋯ event missing"),
      el("p", { class: "hint" }, "Events of this flow name it as their cause, but none of its spans were found (sampled out or lost)."),
      table([["event id", id]]),
    );
  }

  function showDetails(e) {
    const box = document.getElementById("details");
    box.replaceChildren();
    box.dataset.eventId = e.event_id;
    box.append(
      el("h3", {}, e.event_type + " ", el("span", { class: "badge", style: "background:" + colour(e.status) }, words(e.status))),
      table([
        ["event id", e.event_id],
        ["event type", e.event_type],
        ["business key", e.business_key],
        ["correlation id", e.correlation_id],
        ["causation id", e.causation_id || "(root)"],
        ["publisher", e.publisher || "⋯ publish span missing"],
        ["destination", e.destination],
        ["published", iso(e.published_ns)],
        ["published ×", e.publishes > 1 ? e.publishes : null],
        ["emitted by", e.emitted_by ? e.emitted_by.subscriber + " handling " + e.emitted_by.event_id : null],
        ["trace id", e.trace_id],
        ["span id", e.span_id],
      ]),
    );
    if (e.attributes && Object.keys(e.attributes).length) {
      box.append(el("h4", {}, "publish span attributes"), attributes(e.attributes));
    }
    if (e.spans && e.spans.length) {
      const around = e.spans.map((s) => "· " + s.name + " " + ms(s.duration_s) + (s.error ? " error" : "")).join("\n");
      box.append(el("h4", {}, "spans around its publish"), el("pre", { class: "spans" }, around));
    }
    if (!e.handlings.length) box.append(el("p", { class: "hint" }, "No handling seen."));
    for (const h of e.handlings) {
      box.append(
        el("h4", {}, "handled by " + h.subscriber + (h.service !== h.subscriber ? " (" + h.service + ")" : "") + " ",
          el("span", { class: "badge", style: "background:" + colour(h.status) }, words(h.status))),
      );
      box.append(
        table([
          ["attempts", h.attempts],
          ["retries", h.retries || null],
          ["replays", h.replays || null],
          ["missing attempts", h.missing_attempts.length ? h.missing_attempts.join(", ") : null],
          ["queue", h.queue_s !== null ? ms(h.queue_s) : null],
          ["duration", ms(h.duration_s)],
          ["error type", h.error_type],
        ]),
      );
      for (const a of h.attempt_spans) {
        const spans = a.spans.map((s) => "· " + s.name + " " + ms(s.duration_s) + (s.error ? " error" : "")).join("\n");
        box.append(
          el(
            "div",
            { class: "attempt" },
            table([
              ["attempt " + a.attempt, words(a.outcome)],
              ["started", iso(a.start_ns)],
              ["ran", ms(a.duration_s)],
              ["queued", a.queue_s !== null ? ms(a.queue_s) : null],
              ["error", a.error_type ? a.error_type + (a.error_message ? ": " + a.error_message : "") : null],
              ["span", a.trace_id + " / " + a.span_id],
              ["spans", spans],
            ]),
            a.attributes ? el("details", {}, el("summary", {}, "attributes of the attempt's span"), attributes(a.attributes)) : null,
          ),
        );
      }
    }
    const caused = state.flow.events.filter((x) => x.causation_id === e.event_id);
    if (caused.length) {
      box.append(el("h4", {}, "caused " + caused.length + " event" + (caused.length === 1 ? "" : "s")));
      const list = el("div");
      for (const c of caused.slice(0, 50)) {
        list.append(el("div", {}, el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); select(c.event_id); } }, c.event_type + " " + c.event_id)));
      }
      if (caused.length > 50) list.append(el("div", { class: "hint" }, "… and " + (caused.length - 50) + " more"));
      box.append(list);
    }
  }

  // -- the timeline --------------------------------------------------------------------------------

  let timeline = null;

  function timelineModel(flow) {
    const start = BigInt(flow.start_ns || 0);
    const at = (ns) => Number(BigInt(ns) - start) / 1e9;
    const services = new Map();
    const row = (name) => {
      if (!services.has(name)) services.set(name, { name, bars: [], marks: [], lanes: [] });
      return services.get(name);
    };
    let end = 0;
    for (const e of flow.events) {
      if (e.publisher && !e.missing_publish) row(e.publisher).marks.push({ t: at(e.published_ns), event: e });
      for (const h of e.handlings) {
        for (const a of h.attempt_spans) {
          const t0 = at(a.start_ns);
          const t1 = t0 + (a.duration_s || 0);
          end = Math.max(end, t1);
          row(h.service).bars.push({ t0, t1, event: e, outcome: a.outcome, subscriber: h.subscriber });
        }
      }
    }
    end = Math.max(end, flow.wall_s || 0, 1e-6);
    const rows = [...services.values()].sort((a, b) => a.name.localeCompare(b.name));
    for (const r of rows) {
      r.bars.sort((a, b) => a.t0 - b.t0);
      const laneEnds = [];
      for (const bar of r.bars) {
        let lane = laneEnds.findIndex((t) => t <= bar.t0);
        if (lane < 0) lane = laneEnds.length < LANES_MAX ? laneEnds.length : laneEnds.indexOf(Math.min(...laneEnds));
        laneEnds[lane] = bar.t1;
        bar.lane = lane;
      }
      r.laneCount = Math.max(1, laneEnds.length);
    }
    return { rows, end };
  }

  function drawTimeline(flow) {
    const canvas = document.getElementById("timeline");
    const model = timelineModel(flow);
    const label = 130;
    let y = 32;
    for (const r of model.rows) {
      r.y = y;
      y += r.laneCount * LANE_H + 12;
    }
    const height = y + 4;
    const width = canvas.parentElement.clientWidth - 20;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    canvas.style.height = height + "px";
    const x0 = d3.scaleLinear().domain([0, model.end]).range([label, width - 10]);
    timeline = { canvas, model, label, width, height, ratio, x0, x: x0 };
    if (!canvas.dataset.zoomable) {
      canvas.dataset.zoomable = "true";
      d3.select(canvas)
        .call(
          d3
            .zoom()
            .scaleExtent([1, 10000])
            .on("zoom", (e) => {
              timeline.x = e.transform.rescaleX(timeline.x0);
              drawTimelineNow();
            }),
        )
        .on("click", (e) => {
          const hit = timelineHit(e.offsetX, e.offsetY);
          if (hit) select(hit.event.event_id);
        });
    }
    drawTimelineNow();
  }

  function drawTimelineNow() {
    if (!timeline) return;
    const { canvas, model, label, width, height, ratio, x } = timeline;
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#5f6368";
    g.strokeStyle = "#eceff1";
    for (const tick of x.ticks(8)) {
      const px = x(tick);
      if (px < label || px > width) continue;
      g.beginPath();
      g.moveTo(px, 16);
      g.lineTo(px, height);
      g.stroke();
      g.fillText(ms(tick), px + 2, 12);
    }
    for (const r of model.rows) {
      g.fillStyle = "#202124";
      g.font = "12px system-ui, sans-serif";
      g.fillText(short(r.name, 18), 4, r.y + 11);
      g.strokeStyle = "#dadce0";
      g.beginPath();
      g.moveTo(label, r.y + r.laneCount * LANE_H + 5);
      g.lineTo(width, r.y + r.laneCount * LANE_H + 5);
      g.stroke();
      for (const bar of r.bars) {
        const a = Math.max(label, x(bar.t0));
        const b = Math.min(width, x(bar.t1));
        if (b < label || a > width) continue;
        g.fillStyle = colour(bar.outcome);
        g.fillRect(a, r.y + bar.lane * LANE_H, Math.max(2, b - a), LANE_H - 3);
        if (bar.event.event_id === state.selected) {
          g.strokeStyle = "#202124";
          g.lineWidth = 2;
          g.strokeRect(a, r.y + bar.lane * LANE_H, Math.max(2, b - a), LANE_H - 3);
          g.lineWidth = 1;
        }
      }
      g.fillStyle = "#263238";
      for (const mark of r.marks) {
        const px = x(mark.t);
        if (px < label || px > width) continue;
        g.beginPath();
        g.moveTo(px, r.y - 4);
        g.lineTo(px - 3, r.y - 9);
        g.lineTo(px + 3, r.y - 9);
        g.fill();
      }
    }
  }

  function timelineHit(px, py) {
    const { model, x } = timeline;
    for (const r of model.rows) {
      for (const bar of r.bars) {
        const top = r.y + bar.lane * LANE_H;
        if (py >= top && py <= top + LANE_H && px >= x(bar.t0) - 2 && px <= Math.max(x(bar.t1), x(bar.t0) + 2) + 2) return bar;
      }
    }
    return null;
  }

  // -- the service graph -----------------------------------------------------------------------------

  function drawServices(flow) {
    const svg = d3.select("#services");
    svg.selectAll("*").remove();
    const box = svg.node().getBoundingClientRect();
    const statuses = new Map(flow.services.map((s) => [s, []]));
    const edges = new Map();
    for (const e of flow.events) {
      for (const h of e.handlings) {
        if (!statuses.has(h.service)) statuses.set(h.service, []);
        statuses.get(h.service).push(h.status);
        if (e.publisher) {
          const key = e.publisher + "\u0000" + h.service;
          if (!edges.has(key)) edges.set(key, { from: e.publisher, to: h.service, count: 0, types: new Set() });
          const edge = edges.get(key);
          edge.count += 1;
          edge.types.add(e.event_type);
        }
      }
    }
    const names = [...statuses.keys()].sort();
    const cx = box.width / 2;
    const cy = box.height / 2;
    const radius = names.length > 1 ? Math.min(cx - 90, cy - 40) : 0;
    const at = new Map(
      names.map((n, i) => {
        const angle = -Math.PI / 2 + (2 * Math.PI * i) / names.length;
        return [n, [cx + radius * Math.cos(angle), cy + radius * Math.sin(angle)]];
      }),
    );
    svg
      .append("defs")
      .append("marker")
      .attr("id", "arrow")
      .attr("viewBox", "0 -5 10 10")
      .attr("refX", 10)
      .attr("markerWidth", 7)
      .attr("markerHeight", 7)
      .attr("orient", "auto")
      .append("path")
      .attr("d", "M0,-5L10,0L0,5")
      .attr("fill", "#90a4ae");
    const R = 26;
    const group = svg.append("g");
    for (const edge of edges.values()) {
      const [x1, y1] = at.get(edge.from);
      const [x2, y2] = at.get(edge.to);
      const title = edge.from + " → " + edge.to + ": " + edge.count + " (" + [...edge.types].join(", ") + ")";
      if (edge.from === edge.to) {
        group
          .append("path")
          .attr("class", "svc-edge")
          .attr("d", `M${x1 - 10},${y1 - R + 2} C${x1 - 40},${y1 - 80} ${x1 + 40},${y1 - 80} ${x1 + 10},${y1 - R + 2}`)
          .attr("marker-end", "url(#arrow)")
          .append("title")
          .text(title);
        group.append("text").attr("class", "svc-edge-label").attr("x", x1).attr("y", y1 - 66).text(edge.count);
        continue;
      }
      const dx = x2 - x1;
      const dy = y2 - y1;
      const len = Math.hypot(dx, dy) || 1;
      const [nx, ny] = [-dy / len, dx / len];
      const bend = 18; // both directions of a pair stay apart
      const [mx, my] = [(x1 + x2) / 2 + nx * bend, (y1 + y2) / 2 + ny * bend];
      const sx = x1 + (dx / len) * R;
      const sy = y1 + (dy / len) * R;
      const tx = x2 - (dx / len) * (R + 2);
      const ty = y2 - (dy / len) * (R + 2);
      group
        .append("path")
        .attr("class", "svc-edge")
        .attr("stroke-width", Math.min(6, 1 + Math.log2(edge.count)))
        .attr("d", `M${sx},${sy} Q${mx},${my} ${tx},${ty}`)
        .attr("marker-end", "url(#arrow)")
        .append("title")
        .text(title);
      group.append("text").attr("class", "svc-edge-label").attr("x", mx).attr("y", my).text(edge.count);
    }
    const node = svg
      .append("g")
      .selectAll("g")
      .data(names)
      .join("g")
      .attr("class", "svc")
      .attr("data-service", (n) => n)
      .attr("transform", (n) => "translate(" + at.get(n)[0] + "," + at.get(n)[1] + ")");
    node
      .append("circle")
      .attr("r", R)
      .attr("fill", (n) => colour(worst(statuses.get(n))));
    node
      .append("text")
      .attr("y", R + 14)
      .text((n) => n);
    node.append("title").text((n) => n + ": " + statuses.get(n).length + " handlings");
  }

  // -- putting it together ---------------------------------------------------------------------------

  function legend() {
    const box = document.getElementById("legend");
    box.replaceChildren();
    for (const s of ["completed", "retried", "rejected", "failed", "dead_lettered", "published"]) {
      box.append(el("span", { class: "badge", style: "background:" + colour(s) }, words(s)));
    }
  }

  function showFlow(index) {
    const flows = state.document.flows;
    state.index = index;
    state.flow = flows[index];
    state.expanded = new Set();
    state.selected = null;
    state.byId = new Map(state.flow.events.map((e) => [e.event_id, e]));
    document.querySelectorAll("nav#flows button").forEach((b, i) => b.setAttribute("aria-pressed", String(i === index)));
    showSummary(state.flow);
    drawCausation(state.flow);
    drawTimeline(state.flow);
    drawServices(state.flow);
    document.getElementById("details").replaceChildren(el("p", { class: "hint" }, "Click an event for its details."));
  }

  function showDocument(doc) {
    const started = performance.now();
    state.document = doc;
    const nav = document.getElementById("flows");
    nav.replaceChildren();
    const flows = doc.flows || [];
    const views = document.getElementById("views");
    views.hidden = flows.length === 0;
    document.getElementById("details").hidden = flows.length === 0;
    if (!flows.length) {
      document.getElementById("summary").replaceChildren(el("div", { class: "empty" }, "No flow found for " + doc.query + " in " + doc.source + "."));
      setStatus("no flow found");
      return;
    }
    if (flows.length > 1) {
      flows.forEach((f, i) => {
        const name = (f.business_keys.join(", ") || f.correlation_id) + " · " + f.events.length + " events · " + words(f.status);
        nav.append(el("button", { type: "button", "aria-pressed": "false", onclick: () => showFlow(i) }, name));
      });
    }
    showFlow(0);
    const skipped = doc.skipped_spans ? " (" + doc.skipped_spans + " unreadable spans skipped)" : "";
    setStatus(flows.length + " flow" + (flows.length === 1 ? "" : "s") + " for " + doc.query + " from " + doc.source + skipped);
    window.flowPageRenderMs = performance.now() - started;
  }

  async function search(kind, text) {
    setStatus("searching…");
    const params = new URLSearchParams({ [kind]: text });
    history.replaceState(null, "", "?" + params.toString());
    try {
      const answer = await fetch("api/flows?" + params.toString());
      const doc = await answer.json();
      if (!answer.ok) {
        setStatus(doc.error || "error " + answer.status, true);
        return;
      }
      showDocument(doc);
    } catch (error) {
      setStatus("the server did not answer: " + error, true);
    }
  }

  function startSearch() {
    const form = document.getElementById("search");
    form.hidden = false;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      search(document.getElementById("search-kind").value, document.getElementById("search-text").value.trim());
    });
    const params = new URLSearchParams(location.search);
    for (const kind of ["key", "correlation_id", "event"]) {
      if (params.get(kind)) {
        document.getElementById("search-kind").value = kind;
        document.getElementById("search-text").value = params.get(kind);
        return search(kind, params.get(kind));
      }
    }
    document.getElementById("views").hidden = true;
    document.getElementById("details").hidden = true;
    setStatus("search a flow by business key, correlation id or event id");
    return Promise.resolve();
  }

  async function start() {
    legend();
    const doc = JSON.parse(document.getElementById("flow-data").textContent);
    if (document.body.dataset.mode === "serve") await startSearch();
    else showDocument(doc);
    window.flowPageOpenMs = performance.now(); // since the navigation started: the benchmark's number
    document.documentElement.dataset.rendered = "true";
  }

  window.addEventListener("resize", () => {
    if (state.flow) {
      drawTimeline(state.flow);
      drawServices(state.flow);
    }
  });
  start();
})();
