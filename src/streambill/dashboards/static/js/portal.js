// The customer portal: live balance, top-up, history, usage, forecast, statements, settings.
// Money arrives as integer micros and is formatted with SB.money (exact); sums use BigInt.
// Only the usage chart turns micros into Numbers, for plotting, and labels its axis with
// SB.money again.
"use strict";
(function () {
  const { el, t, api, money } = SB;
  const me = SB.page.me;
  const customerId = me.tenant_id;
  const base = "/v2/customers/" + encodeURIComponent(customerId);
  const PAGE_SIZE = 20;
  const msg = SB.page.messages;

  const state = {
    customer: null,
    currency: me.currency || "EUR",
    balanceMicros: null,
    seq: 0,
    history: { cursors: [null], index: 0, next: null },
    granularity: "hour",
    statementMonth: null,
  };

  // -- helpers -------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function label(prefix, key) {
    const full = prefix + key;
    return Object.prototype.hasOwnProperty.call(msg, full) ? msg[full] : key;
  }

  // "12,50" / "12.5" / "12" -> "12.50"-style decimal text, or null when it is not an amount.
  function amountText(raw) {
    const text = String(raw || "").trim().replace(/\s/g, "").replace(",", ".");
    if (!/^[0-9]{1,12}(\.[0-9]{1,2})?$/.test(text)) return null;
    const [units, cents = ""] = text.split(".");
    return String(BigInt(units)) + "." + cents.padEnd(2, "0");
  }

  // A decimal string in major units -> BigInt micros (exact; extra digits are cut).
  function decimalToMicros(text) {
    if (text === null || text === undefined) return null;
    const match = /^(-?)([0-9]*)(?:\.([0-9]*))?$/.exec(String(text).trim());
    if (!match) return null;
    const units = BigInt(match[2] || "0");
    const fraction = BigInt(((match[3] || "") + "000000").slice(0, 6));
    const micros = units * 1000000n + fraction;
    return match[1] ? -micros : micros;
  }

  // Decimal strings added exactly at 9 decimals (quantities).
  function addDecimals(texts) {
    let total = 0n;
    for (const text of texts) {
      const match = /^(-?)([0-9]*)(?:\.([0-9]*))?$/.exec(String(text));
      if (!match) continue;
      const value = BigInt(match[2] || "0") * 1000000000n + BigInt(((match[3] || "") + "000000000").slice(0, 9));
      total += match[1] ? -value : value;
    }
    const negative = total < 0n;
    if (negative) total = -total;
    const fraction = (total % 1000000000n).toString().padStart(9, "0").replace(/0+$/, "");
    return (negative ? "-" : "") + (total / 1000000000n).toString() + (fraction ? "." + fraction : "");
  }

  // "7.50" -> what a person of this page's language types: "7,50" in German.
  function localAmount(text) {
    if (text === null || text === undefined || text === "") return "";
    const normal = amountText(text) || String(text);
    return SB.page.lang === "de" ? normal.replace(".", ",") : normal;
  }

  function showFormError(node, error, prefix) {
    let text;
    if (error instanceof SB.ApiError) text = (prefix ? prefix + ": " : "") + error.message + " (" + error.code + ")";
    else text = String(error && error.message ? error.message : error);
    node.textContent = text;
    node.hidden = false;
  }

  function hideFormError(node) {
    node.hidden = true;
    node.textContent = "";
  }

  function emptyRow(tbody, columns, text) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: String(columns), class: "empty", text })));
  }

  function moneyCell(micros, extra) {
    const value = BigInt(micros);
    const cls = "num" + (value < 0n ? " negative" : "") + (extra ? " " + extra : "");
    return el("td", { class: cls, text: money(micros, state.currency) });
  }

  function monthLabel(month) {
    const [year, mon] = month.split("-").map(Number);
    return new Intl.DateTimeFormat(SB.locale, { month: "long", year: "numeric", timeZone: "UTC" })
      .format(new Date(Date.UTC(year, mon - 1, 1)));
  }

  function unitPriceText(price) {
    const digits = Math.min(Math.max(((String(price).split(".")[1] || "").replace(/0+$/, "")).length, 2), 6);
    return money(decimalToMicros(price), state.currency, digits);
  }

  // -- 1. balance ----------------------------------------------------------------------------
  function thresholdMicros() {
    const c = state.customer;
    if (!c) return null;
    if (c.low_balance_threshold !== null && c.low_balance_threshold !== undefined) return decimalToMicros(c.low_balance_threshold);
    if (c.auto_topup) return decimalToMicros(c.auto_topup.threshold);
    return null;
  }

  function renderBalance(changed) {
    const value = $("balance-value");
    if (state.balanceMicros === null) return;
    const micros = BigInt(state.balanceMicros);
    value.textContent = money(micros, state.currency);
    value.dataset.seq = String(state.seq);
    value.classList.toggle("negative", micros < 0n);
    $("balance-currency").textContent = state.currency;
    const threshold = thresholdMicros();
    const level = micros <= 0n ? "depleted" : threshold !== null && micros < threshold ? "low" : "ok";
    const card = $("overview");
    card.dataset.state = level;
    const badge = $("balance-state");
    badge.className = "badge " + (level === "ok" ? "badge-ok" : level === "low" ? "badge-warn" : "badge-bad");
    badge.textContent = t("state_" + level);
    // the bar: the balance against twice the warning level (or 100 units), capped at 100 %
    const scale = threshold && threshold > 0n ? threshold * 2n : 100000000n;
    const pct = micros <= 0n ? 0n : micros >= scale ? 100n : (micros * 100n) / scale;
    $("balance-bar").style.width = pct.toString() + "%";
    $("balance-threshold").textContent = threshold === null ? t("threshold_none") : t("threshold_line", { amount: money(threshold, state.currency) });
    const auto = state.customer && state.customer.auto_topup;
    $("balance-autotopup").textContent = auto && auto.enabled
      ? t("autotopup_line_on", { amount: money(decimalToMicros(auto.amount), state.currency), threshold: money(decimalToMicros(auto.threshold), state.currency) })
      : t("autotopup_line_off");
    if (changed) SB.flash(value);
  }

  function applyBalance(micros, seq, at) {
    if (seq <= state.seq && state.balanceMicros !== null) return false;
    const changed = state.balanceMicros !== null && BigInt(state.balanceMicros) !== BigInt(micros);
    state.balanceMicros = micros;
    state.seq = seq;
    const updated = $("balance-updated");
    updated.textContent = SB.dateTime(at || new Date().toISOString(), true);
    updated.setAttribute("datetime", at || new Date().toISOString());
    renderBalance(changed);
    return true;
  }

  async function loadBalance() {
    try {
      const doc = await api("GET", base + "/balance");
      state.currency = doc.currency || state.currency;
      applyBalance(doc.balance_micros, doc.seq, doc.updated_at);
    } catch (error) {
      if (error.status === 404) { state.balanceMicros = 0; renderBalance(false); return; }
      SB.showError(error);
    }
  }

  // -- customer (settings, profile, thresholds) ----------------------------------------------
  async function loadCustomer() {
    try {
      state.customer = await api("GET", base);
      state.currency = state.customer.currency;
      renderCustomer();
      renderBalance(false);
    } catch (error) {
      SB.showError(error);
    }
  }

  function renderCustomer() {
    const c = state.customer;
    $("account-name").textContent = c.name;
    $("profile-name").textContent = c.name;
    $("profile-currency").textContent = c.currency;
    for (const node of document.querySelectorAll(".currency-code")) node.textContent = c.currency;
    const prices = $("profile-prices");
    prices.replaceChildren();
    if (!c.prices.length) prices.textContent = t("none");
    for (const p of c.prices) {
      prices.append(el("div", {}, el("span", { text: label("meter_", p.meter) + ": " }),
        el("strong", { text: t("per_unit", { price: unitPriceText(p.unit_price) }) })));
    }
    const auto = c.auto_topup || { enabled: false, threshold: "", amount: "" };
    $("auto-enabled").checked = !!auto.enabled;
    $("auto-threshold").value = localAmount(auto.threshold);
    $("auto-amount").value = localAmount(auto.amount);
    $("low-threshold").value = localAmount(c.low_balance_threshold);
    const pm = c.payment_method;
    $("pm-label").textContent = pm ? pm.label : t("pm_none");
    $("pm-label").classList.toggle("muted", !pm);
    $("pm-setup").textContent = pm ? t("pm_replace") : t("pm_setup");
    $("pm-remove").hidden = !pm;
  }

  // -- 2. top-up -----------------------------------------------------------------------------
  function setupTopup() {
    const form = $("topup-form");
    const amount = $("topup-amount");
    const error = $("topup-error");
    for (const button of form.querySelectorAll(".quick")) {
      button.textContent = money(BigInt(button.dataset.amount) * 1000000n, state.currency, 0);
      button.addEventListener("click", () => {
        amount.value = localAmount(button.dataset.amount);
        hideFormError(error);
        amount.focus();
      });
    }
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      hideFormError(error);
      const text = amountText(amount.value);
      if (text === null) {
        error.textContent = t("invalid_amount");
        error.hidden = false;
        amount.focus();
        return;
      }
      const submit = $("topup-submit");
      submit.disabled = true;
      const back = window.location.origin + "/portal";
      // One Idempotency-Key per top-up: resubmitting the same one after an unclear failure
      // reuses it, so the api starts one payment, not two.
      const attempt = text + "|" + $("topup-save").checked;
      if (!state.topupKey || state.topupAttempt !== attempt) {
        state.topupKey = "dash-" + Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
        state.topupAttempt = attempt;
      }
      try {
        const answer = await api("POST", base + "/topups", {
          amount: text,
          save_payment_method: $("topup-save").checked,
          success_url: back + "?checkout=success#topup",
          cancel_url: back + "?checkout=cancel#topup",
        }, { "Idempotency-Key": state.topupKey });
        state.topupKey = null;
        if (answer.checkout_url) {
          submit.textContent = t("topup_redirecting");
          window.location.assign(safeExternal(answer.checkout_url));
          return;
        }
        loadTopups();
        submit.disabled = false;
      } catch (e) {
        showFormError(error, e, t("topup_failed"));
        submit.disabled = false;
        loadTopups();
      }
    });
  }

  function topupBadge(status) {
    const cls = status === "succeeded" ? "badge-succeeded" : status === "failed" || status === "expired" ? "badge-failed" : "badge-pending";
    return el("span", { class: "badge " + cls, "data-status": status, text: label("topup_status_", status) });
  }

  async function loadTopups() {
    const tbody = $("topups-table").tBodies[0];
    try {
      const doc = await api("GET", base + "/topups?limit=100");
      const items = doc.items.slice().sort((a, b) => (a.created_at < b.created_at ? 1 : -1)).slice(0, 6);
      if (!items.length) { emptyRow(tbody, 4, t("topups_empty")); return; }
      tbody.replaceChildren(...items.map((item) => {
        const status = el("td", {}, topupBadge(item.status));
        // The api's own pay link, relative: the session cookie belongs to this page's host
        // (a white-label one, too); Checkout's own page only when it is https (or loopback).
        const payable = item.action_url
          ? "/v2/topups/" + encodeURIComponent(item.id) + "/checkout"
          : (item.checkout_url && item.status === "open" ? safeExternal(item.checkout_url) : null);
        if (payable) status.append(" ", el("a", { href: payable, class: "small", text: t("topup_pay") }));
        return el("tr", {},
          el("td", { text: SB.dateTime(item.created_at) }),
          el("td", { text: label("topup_kind_", item.kind) }),
          el("td", { class: "num", text: money(item.amount_micros, item.currency) }),
          status);
      }));
    } catch (error) {
      emptyRow(tbody, 4, t("error") + ": " + error.message);
    }
  }

  // -- 3. history ----------------------------------------------------------------------------
  async function loadHistory() {
    const h = state.history;
    const tbody = $("history-table").tBodies[0];
    const before = h.cursors[h.index];
    const query = "?limit=" + PAGE_SIZE + (before ? "&before_seq=" + before : "");
    try {
      const doc = await api("GET", base + "/ledger" + query);
      const entries = doc.entries;
      h.next = "next_before_seq" in doc ? doc.next_before_seq : entries.length === PAGE_SIZE ? entries[entries.length - 1].seq : null;
      if (entries.length && entries[entries.length - 1].seq <= 1) h.next = null;
      if (!entries.length) emptyRow(tbody, 5, t("history_empty"));
      else tbody.replaceChildren(...entries.map(historyRow));
      $("history-page").textContent = t("history_page", { page: h.index + 1 });
      $("history-prev").disabled = h.index === 0;
      $("history-next").disabled = !h.next;
    } catch (error) {
      emptyRow(tbody, 5, t("error") + ": " + error.message);
    }
  }

  function historyRow(entry) {
    const what = entry.meter
      ? el("td", {}, el("span", { text: label("meter_", entry.meter) }), el("span", { class: "muted", text: " × " + SB.decimal(entry.quantity, 6) }))
      : el("td", { class: "muted", text: "–" });
    return el("tr", { "data-seq": String(entry.seq) },
      el("td", { text: SB.dateTime(entry.occurred_at, true) }),
      el("td", {}, el("span", { class: "badge kind-" + entry.kind, text: label("kind_", entry.kind) })),
      what,
      moneyCell(entry.amount_micros, entry.amount_micros > 0 ? "positive" : ""),
      el("td", { class: "num", text: money(entry.balance_micros, entry.currency) }));
  }

  function setupHistory() {
    $("history-next").addEventListener("click", () => {
      const h = state.history;
      if (!h.next) return;
      h.cursors = h.cursors.slice(0, h.index + 1);
      h.cursors.push(h.next);
      h.index += 1;
      loadHistory();
    });
    $("history-prev").addEventListener("click", () => {
      const h = state.history;
      if (h.index === 0) return;
      h.index -= 1;
      loadHistory();
    });
  }

  // -- 4. usage ------------------------------------------------------------------------------
  let usagePlot = null;

  async function loadUsage() {
    const container = $("usage-chart");
    const totals = $("usage-totals");
    const granularity = state.granularity;
    try {
      const doc = await api("GET", base + "/usage?granularity=" + granularity);
      if (granularity !== state.granularity) return;
      const currency = doc.currency || state.currency;
      const stepS = granularity === "hour" ? 3600 : 86400;
      const startS = Math.floor(new Date(doc.since).getTime() / 1000);
      const endS = Math.floor(new Date(doc.until).getTime() / 1000);
      $("usage-range").textContent = t("usage_range_" + granularity, {
        from: granularity === "hour" ? SB.dateTime(doc.since) : SB.date(doc.since),
        to: granularity === "hour" ? SB.dateTime(doc.until) : SB.date(doc.until),
      });
      const spendByBucket = new Map();
      let spend = 0n;
      let events = 0;
      const quantities = new Map();
      for (const b of doc.buckets) {
        const at = Math.floor(new Date(b.bucket).getTime() / 1000);
        spendByBucket.set(at, (spendByBucket.get(at) || 0n) + BigInt(b.spend_micros));
        spend += BigInt(b.spend_micros);
        events += b.entries;
        quantities.set(b.meter, (quantities.get(b.meter) || []).concat([b.quantity]));
      }
      totals.replaceChildren(
        totalBox(t("usage_total_spend"), money(spend, currency), "usage-total-spend"),
        totalBox(t("usage_total_events"), SB.decimal(events, 0), "usage-total-events"),
        ...[...quantities.entries()].map(([meter, list]) => totalBox(label("meter_", meter), SB.decimal(addDecimals(list), 3))));
      if (usagePlot) { usagePlot.destroy(); usagePlot = null; }
      if (!doc.buckets.length) {
        container.replaceChildren(el("p", { class: "empty", text: t("usage_empty") }));
        return;
      }
      const xs = [];
      const ys = [];
      for (let at = startS; at < endS; at += stepS) {
        xs.push(at);
        // micros -> major units as a Number: for plotting only
        const micros = spendByBucket.get(at);
        ys.push(micros === undefined ? null : Number(SB.microsToDecimal(micros)));
      }
      const primary = SB.cssVar("--primary") || "#1d4ed8";
      const bars = window.uPlot && window.uPlot.paths && window.uPlot.paths.bars ? window.uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
      usagePlot = SB.chart(container, {
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] } },
        axes: [
          { stroke: "#5b6576", grid: { show: false }, size: granularity === "hour" ? 54 : 36, values: (u, splits) => splits.map((s, i) => axisTime(s, i ? splits[i - 1] : null, granularity)) },
          { stroke: "#5b6576", size: 80, grid: { stroke: "#eef1f6" },
            values: (u, splits) => splits.map((v) => money(BigInt(Math.round(v * 1e6)), currency)) },
        ],
        series: [
          {},
          { label: t("usage_spend"), stroke: primary, fill: primary + "cc", width: 1, paths: bars, points: { show: false },
            value: (u, v) => (v === null ? "–" : money(BigInt(Math.round(v * 1e6)), currency)) },
        ],
      }, [xs, ys]);
    } catch (error) {
      container.replaceChildren(el("p", { class: "empty", text: t("error") + ": " + error.message + " (" + error.code + ")" }));
    }
  }

  const tz = me.timezone || undefined;
  const hourFormat = new Intl.DateTimeFormat(SB.locale, { hour: "2-digit", minute: "2-digit", timeZone: tz });
  const dayFormat = new Intl.DateTimeFormat(SB.locale, { day: "numeric", month: "short", timeZone: tz });

  // Hour ticks: the time, and the date under the first tick of each day.
  function axisTime(seconds, previous, granularity) {
    const at = new Date(seconds * 1000);
    if (granularity === "day") return dayFormat.format(at);
    const day = dayFormat.format(at);
    const newDay = previous === null || dayFormat.format(new Date(previous * 1000)) !== day;
    return hourFormat.format(at) + (newDay ? "\n" + day : "");
  }

  function totalBox(name, value, testid) {
    return el("div", { class: "usage-total" }, el("div", { class: "kpi-label", text: name }),
      el("div", { class: "usage-total-value", text: value, "data-testid": testid || null }));
  }

  function setupUsage() {
    for (const button of document.querySelectorAll(".segmented .seg")) {
      button.addEventListener("click", () => {
        state.granularity = button.dataset.granularity;
        for (const other of document.querySelectorAll(".segmented .seg")) other.setAttribute("aria-pressed", String(other === button));
        loadUsage();
      });
    }
  }

  // -- 5. auto top-up and payment method ------------------------------------------------------
  function setupAutoTopup() {
    const form = $("autotopup-form");
    const error = $("autotopup-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      hideFormError(error);
      const enabled = $("auto-enabled").checked;
      const threshold = amountText($("auto-threshold").value || "0");
      const amount = amountText($("auto-amount").value || "0");
      if (threshold === null) { error.textContent = t("invalid_amount"); error.hidden = false; $("auto-threshold").focus(); return; }
      if (amount === null) { error.textContent = t("invalid_amount"); error.hidden = false; $("auto-amount").focus(); return; }
      if (enabled && decimalToMicros(amount) <= 0n) { error.textContent = t("autotopup_need_amount"); error.hidden = false; $("auto-amount").focus(); return; }
      const button = $("autotopup-save");
      button.disabled = true;
      try {
        state.customer = await api("PATCH", base, { auto_topup: { enabled, threshold, amount } });
        renderCustomer();
        renderBalance(false);
        SB.toast(t("autotopup_saved"), "ok");
        if (enabled && !state.customer.payment_method) SB.toast(t("autotopup_no_method"));
      } catch (e) {
        showFormError(error, e);
      } finally {
        button.disabled = false;
      }
    });

    $("pm-setup").addEventListener("click", async () => {
      const error = $("pm-error");
      hideFormError(error);
      const button = $("pm-setup");
      button.disabled = true;
      const back = window.location.origin + "/portal";
      try {
        const answer = await api("POST", base + "/payment-methods/setup", {
          success_url: back + "?setup=success#settings",
          cancel_url: back + "?setup=cancel#settings",
        });
        window.location.assign(safeExternal(answer.checkout_url));
      } catch (e) {
        showFormError(error, e, t("pm_failed"));
        button.disabled = false;
      }
    });

    $("pm-remove").addEventListener("click", async () => {
      if (!window.confirm(t("pm_remove_confirm"))) return;
      const error = $("pm-error");
      hideFormError(error);
      try {
        await api("DELETE", base + "/payment-method");
        SB.toast(t("pm_removed"), "ok");
        await loadCustomer();
      } catch (e) {
        showFormError(error, e);
      }
    });
  }

  // -- 6. forecast ---------------------------------------------------------------------------
  async function loadForecast() {
    const body = $("forecast-body");
    let doc;
    try {
      doc = await api("GET", base + "/forecast");
    } catch (error) {
      if (error.status === 404) doc = null;
      else { body.replaceChildren(el("p", { class: "empty", text: t("error") + ": " + error.message })); return; }
    }
    const units = doc ? doc.daily_units || [] : [];
    if (!doc || !doc.days_learned || !units.some((u) => u > 0)) {
      body.replaceChildren(el("p", { class: "empty forecast-empty", text: t("forecast_empty") }));
      return;
    }
    const children = [];
    let headline;
    if (!doc.depletion_at) headline = t("forecast_lasts_long");
    else {
      const days = Math.floor((new Date(doc.depletion_at).getTime() - Date.now()) / 86400000);
      headline = days < 1 ? t("forecast_lasts_less") : days === 1 ? t("forecast_lasts_one") : t("forecast_lasts", { days });
    }
    children.push(el("div", { class: "forecast-headline", "data-testid": "forecast-headline", text: headline }));
    if (doc.depletion_at) children.push(el("div", { class: "kpi-sub", text: t("forecast_until", { date: SB.dateTime(doc.depletion_at) }) }));
    const recommend = el("div", { class: "forecast-recommend" });
    if (doc.recommended_topup_micros) {
      recommend.append(el("span", { class: "muted small", text: t("forecast_recommend") + ": " }),
        el("strong", { text: money(doc.recommended_topup_micros, doc.currency) }), " ",
        el("button", { type: "button", class: "btn btn-small btn-ghost", text: t("forecast_use"), onclick: () => {
          $("topup-amount").value = localAmount(SB.microsToDecimal(doc.recommended_topup_micros).replace(/(\.\d{2})\d*$/, "$1"));
          $("topup").scrollIntoView({ behavior: "smooth" });
          $("topup-amount").focus();
        } }));
    } else {
      recommend.append(el("span", { class: "muted small", text: t("forecast_recommend_none") }));
    }
    children.push(recommend);
    const max = Math.max(...units, 0.000001);
    const list = el("ol", { class: "forecast-days", "aria-label": t("forecast_next7") });
    const dayFormat = new Intl.DateTimeFormat(SB.locale, { weekday: "short" });
    units.forEach((u, i) => {
      const day = new Date(Date.now() + i * 86400000);
      list.append(el("li", {},
        el("span", { class: "fd-day", text: dayFormat.format(day) }),
        el("span", { class: "fd-bar" }, el("span", { style: "height:" + Math.max(2, Math.round((u / max) * 100)) + "%" })),
        el("span", { class: "fd-units", text: SB.decimal(String(u), 1) })));
    });
    children.push(el("div", { class: "muted small forecast-caption", text: t("forecast_next7") + " · " + t("forecast_learned", { days: doc.days_learned }) }), list);
    body.replaceChildren(...children);
  }

  // -- 7. statements -------------------------------------------------------------------------
  async function loadStatements() {
    const tbody = $("statements-table").tBodies[0];
    try {
      const doc = await api("GET", base + "/statements");
      if (!doc.statements.length) { emptyRow(tbody, 7, t("statements_empty")); return; }
      tbody.replaceChildren(...doc.statements.map((s) => el("tr", { "data-month": s.month },
        el("td", { text: monthLabel(s.month) }),
        moneyCell(s.opening_balance_micros),
        moneyCell(s.topups_micros),
        moneyCell(s.usage_micros),
        moneyCell(BigInt(s.refunds_micros) + BigInt(s.adjustments_micros)),
        el("td", { class: "num strong", text: money(s.closing_balance_micros, doc.currency) }),
        el("td", { class: "num" }, el("button", {
          type: "button", class: "btn btn-small btn-ghost", "data-month": s.month, text: t("statement_open"),
          "aria-label": t("statement_open_month", { month: monthLabel(s.month) }), onclick: () => openStatement(s.month),
        })))));
    } catch (error) {
      emptyRow(tbody, 7, t("error") + ": " + error.message);
    }
  }

  async function openStatement(month) {
    const view = $("statement-view");
    try {
      const doc = await api("GET", base + "/statements/" + encodeURIComponent(month));
      state.statementMonth = month;
      const cur = doc.currency;
      $("statement-title").textContent = t("statement_title_month", { month: monthLabel(month) });
      $("statement-meta").textContent = t("statement_meta", { name: state.customer ? state.customer.name : me.tenant_name, id: customerId, tz: doc.timezone });
      const summary = $("statement-summary");
      summary.replaceChildren();
      for (const [key, field] of [["statement_opening", "opening_balance_micros"], ["statement_topups", "topups_micros"],
        ["statement_usage", "usage_micros"], ["statement_refunds", "refunds_micros"],
        ["statement_adjustments", "adjustments_micros"], ["statement_closing", "closing_balance_micros"]]) {
        summary.append(el("div", { class: field === "closing_balance_micros" ? "total" : "" },
          el("dt", { text: t(key) }), el("dd", { text: money(doc[field], cur) })));
      }
      const tbody = $("statement-lines").tBodies[0];
      if (!doc.lines.length) emptyRow(tbody, 5, t("statement_no_lines"));
      else tbody.replaceChildren(...doc.lines.map((line) => el("tr", {},
        el("td", { text: label("kind_", line.kind) }),
        el("td", { text: line.meter ? label("meter_", line.meter) : "–" }),
        el("td", { class: "num", text: line.quantity === null ? "–" : SB.decimal(line.quantity, 6) }),
        el("td", { class: "num", text: SB.decimal(line.entries, 0) }),
        moneyCell(line.amount_micros))));
      view.hidden = false;
      document.body.classList.add("statement-open");
      view.scrollIntoView({ behavior: "smooth", block: "start" });
      view.focus({ preventScroll: true });
    } catch (error) {
      SB.showError(error);
    }
  }

  function setupStatements() {
    $("statement-print").addEventListener("click", () => window.print());
    $("statement-close").addEventListener("click", () => {
      $("statement-view").hidden = true;
      document.body.classList.remove("statement-open");
      const opener = document.querySelector('#statements-table button[data-month="' + state.statementMonth + '"]');
      if (opener) opener.focus();
    });
  }

  // -- 8. notifications ----------------------------------------------------------------------
  function setupNotifications() {
    const form = $("notify-form");
    const error = $("notify-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      hideFormError(error);
      const raw = $("low-threshold").value.trim();
      const value = raw === "" ? null : amountText(raw);
      if (raw !== "" && value === null) { error.textContent = t("invalid_amount"); error.hidden = false; $("low-threshold").focus(); return; }
      const button = $("notify-save");
      button.disabled = true;
      try {
        state.customer = await api("PATCH", base, { low_balance_threshold: value });
        renderCustomer();
        renderBalance(false);
        SB.toast(t("notify_saved"), "ok");
      } catch (e) {
        showFormError(error, e);
      } finally {
        button.disabled = false;
      }
    });
  }

  // -- live ----------------------------------------------------------------------------------
  let refreshTimer = null;
  function refreshSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      if (state.history.index === 0) loadHistory();
      loadTopups();
    }, 400);
  }

  let usageTimer = null;
  function usageSoon() {
    if (usageTimer) return;
    usageTimer = setTimeout(() => { usageTimer = null; loadUsage(); loadForecast(); }, 5000);
  }

  // A payment page to send the customer to: https only (plain http only on this machine, for
  // a local Stripe stand-in); anything else is refused rather than followed.
  function safeExternal(url) {
    const parsed = new URL(url, window.location.href);
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(parsed.hostname);
    if (parsed.protocol === "https:" || (parsed.protocol === "http:" && loopback)) return parsed.href;
    throw new SB.ApiError(0, "unsafe_redirect", "refusing to open " + parsed.protocol + " link");
  }

  const shownAlerts = new Set();
  // The latest alerts first (oldest prepended first, so the newest ends on top; no toasts),
  // then live ones as they come; each once.
  async function loadAlerts() {
    try {
      const doc = await api("GET", "/v2/alerts?limit=8&customer_id=" + encodeURIComponent(customerId));
      for (const alert of doc.alerts.slice().reverse()) onAlert(alert, true);
    } catch (e) {
      SB.showError(e);
    }
  }

  function onAlert(alert, quiet) {
    if (alert.customer_id !== customerId || shownAlerts.has(alert.alert_id)) return;
    shownAlerts.add(alert.alert_id);
    const list = $("alert-list");
    const empty = $("alerts-empty");
    if (empty) empty.remove();
    const title = Object.prototype.hasOwnProperty.call(msg, "alert_" + alert.kind) ? msg["alert_" + alert.kind] : t("alert_other") + ": " + alert.kind;
    const details = alert.details || {};
    let detail = "";
    if (alert.kind === "predicted_depletion" && details.depletion_at) detail = t("alert_predicted_detail", { date: SB.dateTime(details.depletion_at) });
    const level = alert.kind === "recovered" ? "ok" : alert.kind === "depleted" || alert.kind === "topup_failed" ? "bad" : "warn";
    list.prepend(el("li", { class: "alert-item alert-" + level, "data-kind": alert.kind, "data-alert-id": alert.alert_id },
      el("span", { class: "badge badge-" + level, text: title }),
      el("time", { class: "muted small", datetime: alert.created_at, text: " " + SB.dateTime(alert.created_at) }),
      detail ? el("div", { class: "small", text: detail }) : null));
    while (list.children.length > 8) {
      shownAlerts.delete(list.lastElementChild.dataset.alertId);
      list.lastElementChild.remove();
    }
    if (quiet !== true) SB.toast(title + (detail ? " – " + detail : ""), level === "bad" ? "error" : level === "ok" ? "ok" : undefined);
  }

  function startLive() {
    SB.live(["balances", "alerts"], {
      open() { loadBalance(); },
      balance(m) {
        if (m.customer_id !== customerId) return;
        if (m.currency) state.currency = m.currency;
        if (applyBalance(m.balance_micros, m.seq, m.applied_at)) {
          refreshSoon();
          usageSoon();
        }
      },
      alert(m) { onAlert(m, false); },
    });
  }

  // -- start ---------------------------------------------------------------------------------
  function notice() {
    const params = new URLSearchParams(window.location.search);
    if (params.get("checkout") === "success") SB.toast(t("topup_status_processing"), "ok");
    if (params.get("setup") === "success") SB.toast(t("saved"), "ok");
  }

  for (const [id, example] of [["topup-amount", "50.00"], ["auto-threshold", "5.00"], ["auto-amount", "20.00"], ["low-threshold", "5.00"]]) {
    $(id).placeholder = localAmount(example);
  }
  setupTopup();
  setupHistory();
  setupUsage();
  setupAutoTopup();
  setupStatements();
  setupNotifications();
  notice();
  loadCustomer().then(() => {
    for (const button of document.querySelectorAll("#topup-form .quick")) {
      button.textContent = money(BigInt(button.dataset.amount) * 1000000n, state.currency, 0);
    }
  });
  loadBalance();
  loadAlerts();
  startLive();
  loadTopups();
  loadHistory();
  loadUsage();
  loadForecast();
  loadStatements();
})();
