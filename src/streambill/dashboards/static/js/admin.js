// The platform admin page: KPIs, the live event rate, resellers, dead letters with replay,
// health and recent alerts. Every figure comes from the API; money stays integer micros.
"use strict";
(function () {
  const { t, api, el, money, decimal, dateTime, flash, toast, ApiError } = window.SB;
  const $ = (id) => document.getElementById(id);

  const KPI_REFRESH_MS = 10000;
  const KPI_LIVE_MIN_GAP_MS = 3000;
  const HEALTH_REFRESH_MS = 30000;
  const RATE_WINDOW_S = 60;
  const RESELLERS_PAGE = 10;
  const LETTERS_PAGE = 20;
  const ALERTS_MAX = 25;
  const FRESH_HIGHLIGHT_MS = 4000;

  function count(n) {
    return decimal(String(n), 0);
  }

  function timeNow() {
    return new Date().toLocaleTimeString(window.SB.locale);
  }

  function setText(node, text) {
    if (!node || node.textContent === text) return;
    const had = node.textContent !== "–" && node.textContent !== "";
    node.textContent = text;
    if (had) flash(node);
  }

  // ---- KPIs ---------------------------------------------------------------------------------
  const kpi = (name) => document.querySelector('[data-testid="kpi-' + name + '"]');
  let lastKpiAt = 0;
  let kpiTimer = null;
  let lastOpenLetters = null;

  async function loadKpis() {
    lastKpiAt = Date.now();
    const error = $("kpis-error");
    let doc;
    try {
      doc = await api("GET", "/v2/admin/kpis");
    } catch (err) {
      error.hidden = false;
      error.textContent = err instanceof ApiError && err.status === 404 ? t("kpis_unavailable") : t("error") + ": " + err.message;
      return;
    }
    error.hidden = true;
    setText(kpi("resellers"), count(doc.resellers));
    setText(kpi("customers"), count(doc.customers));
    setText(kpi("customers-active"), t("kpi_customers_active", { n: count(doc.customers_active) }));
    setText(kpi("usage-today"), count(doc.usage_events_today));
    setText(kpi("ledger"), count(doc.ledger_entries));
    setText(kpi("fraud"), count(doc.fraud_alerts_24h));
    setText(kpi("deadletters"), count(doc.deadletters_open));
    kpi("deadletters").classList.toggle("negative", doc.deadletters_open > 0);
    kpi("fraud").classList.toggle("negative", doc.fraud_alerts_24h > 0);
    renderRevenue(doc.revenue || []);
    $("kpis-updated").textContent = t("updated_at", { time: timeNow() });
    if (lastOpenLetters !== null && doc.deadletters_open !== lastOpenLetters) letters.refreshQuietly();
    lastOpenLetters = doc.deadletters_open;
  }

  function renderRevenue(revenue) {
    const main = kpi("revenue");
    const more = kpi("revenue-more");
    if (revenue.length === 0) {
      setText(main, "–");
      more.textContent = t("kpi_revenue_none");
      return;
    }
    const sorted = revenue.slice().sort((a, b) => (a.currency === "EUR" ? -1 : b.currency === "EUR" ? 1 : a.currency.localeCompare(b.currency)));
    setText(main, money(sorted[0].month_to_date_micros, sorted[0].currency));
    const rest = sorted.slice(1).map((r) => money(r.month_to_date_micros, r.currency));
    more.textContent = rest.length ? "+ " + rest.join(" · ") : t("kpi_revenue_sub");
  }

  // A live message asks for fresher KPIs, at most every KPI_LIVE_MIN_GAP_MS.
  function kpisSoon() {
    if (kpiTimer !== null) return;
    const wait = Math.max(0, lastKpiAt + KPI_LIVE_MIN_GAP_MS - Date.now());
    kpiTimer = setTimeout(() => { kpiTimer = null; loadKpis(); }, wait);
  }

  const clockFormat = new Intl.DateTimeFormat(window.SB.locale, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  function clock(unixSeconds) {
    return clockFormat.format(new Date(unixSeconds * 1000));
  }

  // ---- live event rate ----------------------------------------------------------------------
  const rate = {
    buckets: new Map(), // unix second -> [balances, alerts]
    total: 0,
    plot: null,
    record(kind) {
      const second = Math.floor(Date.now() / 1000);
      let bucket = this.buckets.get(second);
      if (!bucket) { bucket = [0, 0]; this.buckets.set(second, bucket); }
      bucket[kind]++;
      this.total++;
    },
    series() {
      const now = Math.floor(Date.now() / 1000);
      const xs = [], balances = [], alerts = [];
      for (let s = now - RATE_WINDOW_S + 1; s <= now; s++) {
        const bucket = this.buckets.get(s) || [0, 0];
        xs.push(s); balances.push(bucket[0]); alerts.push(bucket[1]);
      }
      for (const s of this.buckets.keys()) if (s <= now - RATE_WINDOW_S) this.buckets.delete(s);
      return [xs, balances, alerts];
    },
    tick() {
      const data = this.series();
      const last = data[1].length - 2; // the last complete second
      const perSecond = data[1][last] + data[2][last];
      $("rate-total").textContent = t("kpi_rate_total", { n: count(this.total) });
      kpi("rate").textContent = count(perSecond);
      const balances = data[1].reduce((a, b) => a + b, 0);
      const alerts = data[2].reduce((a, b) => a + b, 0);
      const peak = Math.max(...data[1].map((b, i) => b + data[2][i]));
      $("rate-peak").textContent = t("per_second", { n: count(peak) });
      $("rate-average").textContent = t("per_second", { n: decimal(((balances + alerts) / RATE_WINDOW_S).toFixed(2), 2) });
      $("rate-balances").textContent = count(balances);
      $("rate-alerts").textContent = count(alerts);
      if (this.plot) this.plot.setData(data);
    },
    start() {
      const primary = window.SB.cssVar("--primary") || "#1d4ed8";
      const alertColor = "#b91c1c";
      this.plot = window.SB.chart($("rate-chart"), {
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(5, Math.ceil(max * 1.2))] } },
        axes: [
          { stroke: "#5b6576", grid: { stroke: "#eef1f5" }, space: 70, values: (u, splits) => splits.map(clock) },
          { stroke: "#5b6576", grid: { stroke: "#eef1f5" }, size: 44 },
        ],
        series: [
          {},
          { label: t("rate_balances"), stroke: primary, width: 2, fill: primary + "22", points: { show: false } },
          { label: t("rate_alerts"), stroke: alertColor, width: 2, points: { show: false } },
        ],
      }, this.series());
      this.tick();
      setInterval(() => this.tick(), 1000);
    },
  };

  // ---- health -------------------------------------------------------------------------------
  function check(label, state, detail) {
    // state: "ok" | "bad" | "warn" | "wait"
    const icon = { ok: "✓", bad: "✕", warn: "!", wait: "…" }[state];
    return el("li", { class: "check-item check-" + state, "data-state": state },
      el("span", { class: "check-icon", "aria-hidden": "true", text: icon }),
      el("span", { class: "check-label", text: label }),
      detail ? el("span", { class: "check-detail", text: detail }) : null,
      el("span", { class: "visually-hidden", text: " – " + t("state_" + state) }));
  }

  function liveState() {
    const state = $("live-status").dataset.state;
    return state === "on" ? "ok" : state === "off" ? "bad" : "wait";
  }

  async function fetchJson(path) {
    try {
      const response = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      const doc = await response.json().catch(() => null);
      return { ok: response.ok, status: response.status, doc };
    } catch (err) {
      return { ok: false, status: 0, doc: null };
    }
  }

  async function loadHealth() {
    const [health, ready] = await Promise.all([fetchJson("/healthz"), fetchJson("/readyz")]);
    const items = [check(t("health_api"), health.ok ? "ok" : "bad", health.ok ? t("health_up") : t("health_down"))];
    const parts = ready.doc || {};
    for (const [name, value] of Object.entries(parts)) {
      if (value !== "running" && value !== "stopped") continue;
      const error = parts[name.replace("_relay", "") + "_error"];
      items.push(check(t("part_" + name), value === "running" ? "ok" : "bad", value === "running" ? t("health_running") : error || t("health_stopped")));
    }
    if (!ready.doc) items.push(check(t("health_ready"), "bad", t("health_down")));
    items.push(check(t("health_live"), liveState(), t("live_" + $("live-status").dataset.state)));
    $("health-checks").replaceChildren(...items);
    readyOk = ready.ok;
    healthBadge();
    loadIntegrity();
  }

  let readyOk = null;
  function healthBadge() {
    if (readyOk === null) return;
    const items = [...$("health-checks").querySelectorAll(".check-item")];
    const allOk = items.every((item) => item.dataset.state === "ok");
    const waiting = items.some((item) => item.dataset.state === "wait");
    const state = !readyOk ? "bad" : allOk ? "ok" : waiting ? "wait" : "warn";
    const badge = $("health-badge");
    badge.className = "badge badge-" + (state === "wait" ? "pending" : state);
    badge.textContent = t({ ok: "health_all_ok", warn: "health_degraded", bad: "health_not_ready", wait: "health_checking" }[state]);
  }

  async function loadIntegrity() {
    const items = [];
    try {
      const report = await api("GET", "/v2/admin/ledger/invariants");
      const n = report.violations.length;
      items.push(check(t("ledger_invariants"), n === 0 ? "ok" : "bad", n === 0 ? t("invariants_ok") : t("invariants_bad", { n: count(n) })));
    } catch (err) {
      items.push(check(t("ledger_invariants"), "bad", err.message));
    }
    try {
      const report = await api("GET", "/v2/admin/commissions/check");
      const differing = report.resellers.filter((line) => !line.equal).length;
      items.push(check(t("commission_check"), report.equal ? "ok" : "warn",
        !report.equal ? t("commission_check_diff", { n: count(differing) })
          : report.resellers.length ? t("commission_check_ok", { n: count(report.resellers.length) }) : t("commission_check_none")));
    } catch (err) {
      items.push(check(t("commission_check"), "warn", err.message));
    }
    $("integrity-checks").replaceChildren(...items);
  }

  // The socket state is part of health: follow the top bar's live badge.
  new MutationObserver(() => {
    const list = $("health-checks");
    const item = list && list.lastElementChild;
    if (item && item.classList.contains("check-item")) {
      item.replaceWith(check(t("health_live"), liveState(), t("live_" + $("live-status").dataset.state)));
      healthBadge();
    }
  }).observe($("live-status"), { attributes: true, attributeFilter: ["data-state"] });

  // ---- resellers ----------------------------------------------------------------------------
  const resellers = {
    cursors: [null], // the cursor of each page seen; the last is the current page's
    next: null,
    async load() {
      const body = $("resellers-body");
      const cursor = this.cursors[this.cursors.length - 1];
      let page;
      try {
        page = await api("GET", "/v2/resellers?limit=" + RESELLERS_PAGE + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
      } catch (err) {
        body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty form-error", text: err.message })));
        return;
      }
      this.next = page.next_cursor;
      $("resellers-prev").disabled = this.cursors.length <= 1;
      $("resellers-next").disabled = !this.next;
      $("resellers-page").textContent = t("page") + " " + this.cursors.length;
      if (page.items.length === 0) {
        body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty", text: t("resellers_empty") })));
        return;
      }
      body.replaceChildren(...page.items.map((r) => this.row(r)));
      await Promise.all(page.items.map((r) => this.commission(r)));
    },
    portalUrl(reseller) {
      const port = window.location.port ? ":" + window.location.port : "";
      if (reseller.custom_domain) return window.location.protocol + "//" + reseller.custom_domain + port + "/portal";
      if (!reseller.slug) return null;
      const base = window.SB.page.base_domain || "localhost";
      return window.location.protocol + "//" + reseller.slug + "." + base + port + "/portal";
    },
    row(r) {
      const url = this.portalUrl(r);
      const swatch = r.color_primary ? el("span", { class: "swatch", style: "background:" + r.color_primary, "aria-hidden": "true" }) : null;
      return el("tr", { "data-reseller-id": r.id },
        el("td", {}, el("div", { class: "cell-title" }, swatch, el("strong", { text: r.brand_name || r.name })),
          el("div", { class: "muted small mono", text: r.id })),
        el("td", {}, url ? el("a", { href: url, target: "_blank", rel: "noopener", class: "mono small", text: new URL(url).host }) : el("span", { class: "muted", text: t("no_portal") })),
        el("td", { text: r.currency }),
        el("td", {}, el("span", { class: "badge badge-" + r.status, text: t("status_" + r.status) })),
        el("td", { class: "num", "data-testid": "commission-" + r.id, text: "…" }));
    },
    async commission(r) {
      const cell = document.querySelector('[data-testid="commission-' + r.id + '"]');
      try {
        const month = await api("GET", "/v2/resellers/" + encodeURIComponent(r.id) + "/commissions");
        cell.replaceChildren(el("div", { text: money(month.total_micros, month.currency) }),
          el("div", { class: "muted small", text: t("commission_base", { base: money(month.base_micros, month.currency), rate: window.SB.percent(month.rate) }) }));
        $("resellers-month").textContent = t("month_label", { month: month.month });
      } catch (err) {
        cell.replaceChildren(el("span", { class: "muted", title: err.message, text: "–" }));
      }
    },
  };

  async function createReseller(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const error = $("reseller-error");
    error.hidden = true;
    const name = form.name.value.trim();
    const slug = form.slug.value.trim().toLowerCase();
    if (!name) {
      error.textContent = t("name_required");
      error.hidden = false;
      form.name.focus();
      return;
    }
    const body = { name, currency: form.currency.value };
    if (slug) body.slug = slug;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const created = await api("POST", "/v2/resellers", body);
      toast(t("reseller_created", { name: created.name, id: created.id }), "ok");
      form.reset();
      resellers.cursors = [null];
      await resellers.load();
      loadKpis();
    } catch (err) {
      error.textContent = err.message + (err.code ? " (" + err.code + ")" : "");
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  // ---- dead letters -------------------------------------------------------------------------
  // Indents JSON text without parsing it, so big numbers and odd spacing stay exactly as sent.
  function prettyJson(text) {
    try { JSON.parse(text); } catch (err) { return text; }
    let out = "", depth = 0, inString = false, escaped = false;
    const pad = () => "\n" + "  ".repeat(depth);
    for (const ch of text) {
      if (inString) {
        out += ch;
        if (escaped) escaped = false;
        else if (ch === "\\") escaped = true;
        else if (ch === '"') inString = false;
      } else if (ch === '"') { inString = true; out += ch; }
      else if (ch === "{" || ch === "[") { depth++; out += ch + pad(); }
      else if (ch === "}" || ch === "]") { depth--; out += pad() + ch; }
      else if (ch === ",") out += "," + pad();
      else if (ch === ":") out += ": ";
      else if (!/\s/.test(ch)) out += ch;
    }
    return out.replace(/([{[])\n\s*([}\]])/g, "$1$2");
  }

  // An audit label "role:tenant:credential" in words; the credential id itself is a detail.
  function actor(label) {
    if (!label) return "–";
    if (!label.includes(":")) return t("actor_session", { who: label }); // a person, by e-mail
    const [role, tenant, credential] = label.split(":");
    const who = tenant && tenant !== "-" ? role + " " + tenant : role;
    if (credential === "admin") return t("actor_admin_key");
    if (credential && credential.startsWith("ses_")) return t("actor_session", { who });
    return t("actor_key", { who, key: credential || "–" });
  }

  const CODE_KIND = { unknown_meter: "warn", unknown_customer: "warn", currency_mismatch: "warn", invalid_event: "bad", invalid_json: "bad" };

  const letters = {
    items: new Map(), // id -> letter
    next: null,
    filters() {
      return { status: $("dl-status").value, error_code: $("dl-code").value };
    },
    query(cursor) {
      const f = this.filters();
      let q = "?limit=" + LETTERS_PAGE + "&status=" + encodeURIComponent(f.status);
      if (f.error_code) q += "&error_code=" + encodeURIComponent(f.error_code);
      if (cursor) q += "&cursor=" + encodeURIComponent(cursor);
      return "/v2/admin/deadletters" + q;
    },
    async load(append) {
      const list = $("dl-list");
      let page;
      try {
        page = await api("GET", this.query(append ? this.next : null));
      } catch (err) {
        const text = err instanceof ApiError && err.status === 404 ? t("deadletters_unavailable") : t("error") + ": " + err.message;
        list.replaceChildren(el("p", { class: "empty form-error", text }));
        $("dl-more").hidden = true;
        return;
      }
      const open = new Set([...list.querySelectorAll("details[open]")].map((d) => d.closest(".dl-item").dataset.letterId));
      if (!append) { this.items.clear(); list.replaceChildren(); }
      for (const letter of page.deadletters) {
        this.items.set(letter.id, letter);
        const node = this.render(letter);
        if (open.has(letter.id)) node.querySelector("details").open = true;
        list.append(node);
      }
      this.next = page.next;
      $("dl-more").hidden = !page.next;
      if (this.items.size === 0) list.replaceChildren(el("p", { class: "empty", "data-testid": "dl-empty", text: t("deadletters_empty") }));
      $("dl-count").textContent = this.items.size + (page.next ? "+" : "");
    },
    // New letters arrived (the open count changed): put the newest ones that are not shown
    // yet on top, leaving what is shown (and any replay result on it) alone.
    async refreshQuietly() {
      let page;
      try {
        page = await api("GET", this.query(null));
      } catch (err) {
        return;
      }
      const list = $("dl-list");
      const fresh = page.deadletters.filter((letter) => !this.items.has(letter.id));
      if (fresh.length === 0) return;
      const empty = list.querySelector(".empty");
      if (empty) empty.remove();
      for (const letter of fresh.reverse()) {
        this.items.set(letter.id, letter);
        const node = this.render(letter);
        node.classList.add("fresh");
        list.prepend(node);
      }
      $("dl-count").textContent = this.items.size + (this.next ? "+" : "");
    },
    render(letter, result) {
      const replayed = letter.status === "replayed";
      const canReplay = letter.replayable !== false;
      const button = canReplay
        ? el("button", {
            type: "button",
            class: "btn btn-small " + (replayed ? "btn-ghost" : "btn-primary"),
            "data-action": "replay",
            text: replayed ? t("replay_again") : t("replay"),
            onclick: () => this.replay(letter.id, replayed),
          })
        : el("span", { class: "muted small", text: t("not_replayable") });
      const meta = [t("dl_key") + ": " + (letter.key === null ? "–" : letter.key)];
      if (replayed && letter.replayed_at) meta.push(t("dl_replayed_meta", { at: dateTime(letter.replayed_at, true), by: actor(letter.replayed_by) }));
      if (letter.replays > 1) meta.push(t("dl_replays", { n: count(letter.replays) }));
      const item = el("article", { class: "dl-item" + (replayed ? " is-replayed" : ""), "data-letter-id": letter.id, "data-testid": "dl-item", "data-status": letter.status },
        el("div", { class: "dl-head" },
          el("span", { class: "badge badge-" + (CODE_KIND[letter.error_code] || "bad") + " dl-code", "data-testid": "dl-code", text: letter.error_code }),
          el("span", { class: "badge " + (replayed ? "badge-ok" : "badge-open"), "data-testid": "dl-status", text: t("dl_status_" + letter.status) }),
          el("code", { class: "dl-pos", title: t("dl_position"), text: letter.topic + " · " + t("dl_partition") + " " + letter.partition + " · " + t("dl_offset") + " " + letter.offset }),
          el("time", { class: "dl-time muted small", datetime: letter.failed_at, text: dateTime(letter.failed_at, true) }),
          el("span", { class: "dl-actions" }, button)),
        el("p", { class: "dl-reason", text: letter.reason }),
        el("p", { class: "dl-meta muted small", text: meta.join(" · ") }),
        el("details", { class: "dl-value" },
          el("summary", { text: t("dl_original_value") }),
          el("pre", { "data-testid": "dl-value", text: prettyJson(letter.value) })),
        el("p", { class: "dl-result" + (result && result.error ? " form-error" : " positive"), role: "status", "data-testid": "dl-result", text: result ? result.text : "" }));
      return item;
    },
    replace(id, letter, result) {
      const old = document.querySelector('.dl-item[data-letter-id="' + CSS.escape(id) + '"]');
      if (!old) return;
      const node = this.render(letter, result);
      if (old.querySelector("details").open) node.querySelector("details").open = true;
      old.replaceWith(node);
      const focus = node.querySelector('[data-action="replay"]');
      if (focus) focus.focus();
    },
    async replay(id, force) {
      const letter = this.items.get(id);
      if (!letter || !(await confirmReplay(letter, force))) return;
      const node = document.querySelector('.dl-item[data-letter-id="' + CSS.escape(id) + '"]');
      node.classList.add("busy");
      node.querySelector('[data-action="replay"]').disabled = true;
      try {
        const done = await api("POST", "/v2/admin/deadletters/" + encodeURIComponent(id) + "/replay" + (force ? "?force=true" : ""));
        this.items.set(id, done);
        const text = t("replay_done", { topic: done.topic, at: dateTime(done.replayed_at, true) });
        this.replace(id, done, { text });
        toast(text, "ok");
        loadKpis();
      } catch (err) {
        const text = err.message + (err.code ? " (" + err.code + ")" : "");
        if (err instanceof ApiError && err.code === "already_replayed") {
          const stale = Object.assign({}, letter, { status: "replayed" });
          this.items.set(id, stale);
          this.replace(id, stale, { text, error: true });
        } else {
          node.classList.remove("busy");
          node.querySelector('[data-action="replay"]').disabled = false;
          const line = node.querySelector(".dl-result");
          line.className = "dl-result form-error";
          line.textContent = text;
        }
        toast(t("error") + ": " + text, "error");
      }
    },
  };

  function confirmReplay(letter, force) {
    const dialog = $("replay-dialog");
    $("replay-dialog-text").textContent = t("replay_confirm_text", { code: letter.error_code, topic: letter.topic, key: letter.key === null ? "–" : letter.key });
    $("replay-dialog-force").hidden = !force;
    $("replay-dialog-confirm").textContent = force ? t("replay_again") : t("replay");
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "replay"), { once: true });
      dialog.showModal();
      $("replay-dialog-confirm").focus();
    });
  }

  // ---- recent alerts ------------------------------------------------------------------------
  const ALERT_KIND = {
    fraud_suspected: "bad", depleted: "bad", topup_failed: "bad",
    low_balance: "warn", predicted_depletion: "warn", recovered: "ok",
  };

  // An alert's details in words: known fields by their label, times and amounts formatted,
  // bookkeeping fields (currency, seq) left out; at most four.
  const DETAIL_SKIP = new Set(["currency", "seq", "reseller_id", "customer_id"]);
  function alertDetails(details) {
    if (!details || typeof details !== "object") return "";
    const currency = details.currency;
    return Object.entries(details)
      .filter(([k, v]) => v !== null && typeof v !== "object" && !DETAIL_SKIP.has(k))
      .slice(0, 4)
      .map(([k, v]) => {
        const name = k.replace(/_micros$/, "");
        const known = window.SB.page.messages["detail_" + name];
        let text = String(v);
        try {
          if (k.endsWith("_micros") && currency) text = money(v, currency);
          else if (k.endsWith("_at")) text = dateTime(String(v));
          else if (typeof v === "number") text = decimal(String(v), 2);
        } catch (e) {
          text = String(v);
        }
        return (known || name) + ": " + text;
      })
      .join(" · ");
  }

  function addAlert(message) {
    const list = $("alert-list");
    const empty = list.querySelector(".empty");
    if (empty) empty.remove();
    const label = t("alert_" + message.kind) === "alert_" + message.kind ? message.kind : t("alert_" + message.kind);
    const item = el("li", { class: "alert-item fresh", "data-kind": message.kind, "data-alert-id": message.alert_id },
      el("span", { class: "badge badge-" + (ALERT_KIND[message.kind] || "warn"), text: label }),
      el("span", { class: "alert-who" },
        el("strong", { text: message.customer_id }),
        message.reseller_id ? el("span", { class: "muted small", text: " · " + message.reseller_id }) : null),
      el("span", { class: "alert-details muted small", text: alertDetails(message.details) }),
      el("time", { class: "muted small", datetime: message.created_at, text: dateTime(message.created_at, true) }));
    list.prepend(item);
    setTimeout(() => item.classList.remove("fresh"), FRESH_HIGHLIGHT_MS);
    while (list.children.length > ALERTS_MAX) {
      shownAlerts.delete(list.lastElementChild.dataset.alertId);
      list.lastElementChild.remove();
    }
  }

  // The history first (newest last into the list, so the newest ends on top); live ones are
  // prepended as they come. An alert both in the history and live is shown once.
  const shownAlerts = new Set();
  async function loadAlerts() {
    try {
      const doc = await api("GET", "/v2/alerts?limit=" + ALERTS_MAX);
      for (const alert of doc.alerts.slice().reverse()) addAlertOnce(alert);
    } catch (error) {
      window.SB.showError(error);
    }
  }
  function addAlertOnce(message) {
    if (shownAlerts.has(message.alert_id)) return;
    shownAlerts.add(message.alert_id);
    addAlert(message);
  }

  // ---- wiring -------------------------------------------------------------------------------
  $("resellers-prev").addEventListener("click", () => { if (resellers.cursors.length > 1) { resellers.cursors.pop(); resellers.load(); } });
  $("resellers-next").addEventListener("click", () => { if (resellers.next) { resellers.cursors.push(resellers.next); resellers.load(); } });
  $("reseller-form").addEventListener("submit", createReseller);
  $("dl-filters").addEventListener("submit", (event) => { event.preventDefault(); letters.load(false); });
  $("dl-status").addEventListener("change", () => letters.load(false));
  $("dl-code").addEventListener("change", () => letters.load(false));
  $("dl-more").addEventListener("click", () => letters.load(true));
  $("health-refresh").addEventListener("click", loadHealth);
  $("refresh-all").addEventListener("click", () => { loadKpis(); loadHealth(); resellers.load(); letters.load(false); });

  const sections = [...document.querySelectorAll(".tabs a")];
  function markTab() {
    for (const link of sections) {
      if (link.getAttribute("href") === (window.location.hash || "#overview")) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }
  window.addEventListener("hashchange", markTab);
  markTab();

  rate.start();
  loadKpis();
  loadHealth();
  resellers.load();
  letters.load(false);
  loadAlerts();
  setInterval(loadKpis, KPI_REFRESH_MS);
  setInterval(loadHealth, HEALTH_REFRESH_MS);
  window.SB.live(["balances", "alerts"], {
    balance() { rate.record(0); kpisSoon(); },
    alert(message) { rate.record(1); addAlertOnce(message); kpisSoon(); },
  });
})();
