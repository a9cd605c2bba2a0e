// The reseller dashboard: commission ticker and tier, customers with live balances, KPIs,
// crediting a customer, fraud alerts, payouts and statements, the white-label portal.
// Money arrives as integer micros and is formatted with SB.money (exact); every comparison
// or ratio of money is computed with BigInt, never with floats.
"use strict";
(function () {
  const { el, t, api, money } = SB;
  const me = SB.page.me;
  const resellerId = me.tenant_id;
  const base = "/v2/resellers/" + encodeURIComponent(resellerId);
  const PAGE_SIZE = 15;
  const CUSTOMER_PAGES_MAX = 20; // 20 x 500 customers
  const ENTRIES_SHOWN = 10;
  const FRAUD_SHOWN = 8;
  const REFRESH_DEBOUNCE_MS = 300;
  const KPI_DEBOUNCE_MS = 2000;
  const msg = SB.page.messages;

  const state = {
    currency: me.currency || "EUR",
    customers: [], // TenantPublic, sorted by name
    byId: new Map(),
    balances: new Map(), // customer id -> {micros: BigInt, currency, seq}
    filtered: [],
    pageIndex: 0,
    plan: null,
    summary: null,
    // the newest commission state seen (from an entry or a live message), by position
    latest: { position: -1, month: null, total: null },
    entries: [], // newest first, at most ENTRIES_SHOWN
    entryIds: new Set(),
    lastPosition: 0,
    fraud: [],
    fraudIds: new Set(),
  };

  const $ = (id) => document.getElementById(id);

  function label(prefix, key) {
    const full = prefix + key;
    return Object.prototype.hasOwnProperty.call(msg, full) ? msg[full] : key;
  }

  // A decimal string in major units -> BigInt micros (exact; digits past 6 are cut).
  function decimalToMicros(text) {
    const match = /^(-?)([0-9]*)(?:\.([0-9]*))?$/.exec(String(text).trim());
    if (!match) return null;
    const micros = BigInt(match[2] || "0") * 1000000n + BigInt(((match[3] || "") + "000000").slice(0, 6));
    return match[1] ? -micros : micros;
  }

  // num / den as a decimal fraction string with 4 places (BigInt; den > 0).
  function ratio(num, den) {
    if (den <= 0n) return null;
    const scaled = (num * 10000n) / den;
    const negative = scaled < 0n;
    const abs = negative ? -scaled : scaled;
    return (negative ? "-" : "") + (abs / 10000n).toString() + "." + (abs % 10000n).toString().padStart(4, "0");
  }

  // A width in percent (0..100) for a bar: a display length, not money.
  function widthPercent(num, den) {
    if (den <= 0n || num <= 0n) return 0;
    const perMille = (num * 1000n) / den;
    return Math.min(1000, Number(perMille)) / 10;
  }

  // "12,50" / "-3.5" / "10" -> "12.50"-style text, or null when it is not an amount.
  function amountText(raw) {
    const text = String(raw || "").trim().replace(/\s/g, "").replace(",", ".");
    if (!/^-?[0-9]{1,12}(\.[0-9]{1,6})?$/.test(text)) return null;
    return text;
  }

  function monthLabel(month) {
    if (!month) return "–";
    const [year, mon] = month.split("-").map(Number);
    return new Intl.DateTimeFormat(SB.locale, { month: "long", year: "numeric", timeZone: "UTC" }).format(new Date(Date.UTC(year, mon - 1, 1)));
  }

  // An empty table shows only its message (no wide header to scroll on a phone).
  function emptyRow(tbody, columns, text) {
    tbody.closest("table").classList.add("is-empty");
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: String(columns), class: "empty", text })));
  }

  function fillRows(tbody, rows) {
    tbody.closest("table").classList.remove("is-empty");
    tbody.replaceChildren(...rows);
  }

  function statusBadge(status, prefix) {
    return el("span", { class: "badge badge-" + status, text: label(prefix || "status_", status) });
  }

  function customerName(id) {
    const customer = state.byId.get(id);
    return customer ? customer.name : id;
  }

  function failPanel(tbodyOrList, columns, error) {
    const text = t("load_failed") + ": " + (error && error.message ? error.message : String(error));
    if (tbodyOrList.tagName === "TBODY") emptyRow(tbodyOrList, columns, text);
    else tbodyOrList.replaceChildren(el("li", { class: "empty", text }));
  }

  // -- 1. commission ticker and tier ------------------------------------------------------------
  let tickerShown = null; // BigInt micros currently on screen
  let tickerAnimation = 0;

  function setTicker(totalMicros, currency) {
    const node = $("ticker");
    const target = BigInt(totalMicros);
    node.dataset.micros = target.toString();
    if (tickerShown === null || tickerShown === target || window.matchMedia("(prefers-reduced-motion: reduce)").matches) {
      tickerShown = target;
      node.textContent = money(target, currency);
      return;
    }
    // count from the shown value to the new one (BigInt steps: exact at every frame)
    const from = tickerShown;
    const steps = 20n;
    let step = 0n;
    const animation = ++tickerAnimation;
    SB.flash(node);
    const tick = () => {
      if (animation !== tickerAnimation) return;
      step += 1n;
      const value = step >= steps ? target : from + ((target - from) * step) / steps;
      node.textContent = money(value, currency);
      tickerShown = value;
      if (step < steps) window.requestAnimationFrame(tick);
    };
    window.requestAnimationFrame(tick);
  }

  function renderSummary() {
    const s = state.summary;
    if (!s) return;
    const currency = s.currency;
    // The newest entry (live or read) carries the month's running figures; it wins over the
    // summary, which may be one ClickHouse flush behind (the ticker never steps back).
    const useLatest = state.latest.month === s.month && state.latest.total !== null;
    const total = useLatest ? state.latest.total : BigInt(s.total_micros);
    const commission = useLatest ? state.latest.commission : BigInt(s.commission_micros);
    const bonus = useLatest ? state.latest.bonus : BigInt(s.bonus_micros);
    const baseMicros = useLatest ? state.latest.base : BigInt(s.base_micros);
    const tier = useLatest ? state.latest.tier : s.tier;
    const rate = useLatest ? state.latest.rate : s.rate;
    setTicker(total, currency);
    $("ticker-month").textContent = monthLabel(s.month);
    $("month-label").textContent = monthLabel(s.month);
    $("ticker-base").textContent = money(baseMicros, currency);
    $("ticker-rate").textContent = SB.percent(rate, 2);
    $("ticker-commission").textContent = money(commission, currency);
    $("ticker-bonus").textContent = money(bonus, currency);
    $("ticker-sub").textContent = t("ticker_sub", { rate: SB.percent(rate, 2), base: money(baseMicros, currency) });
    renderTier(tier, baseMicros, currency);
  }

  function renderTier(tier, baseMicros, currency) {
    const plan = state.plan;
    $("tier-badge").textContent = t("tier_n", { n: tier + 1 });
    if (!plan || !plan.tiers || !plan.tiers.length) {
      $("tier-rate").textContent = state.summary ? SB.percent(state.summary.rate, 2) : "–";
      $("tier-next").textContent = t("tier_plan_missing");
      return;
    }
    const tiers = plan.tiers.map((tierDoc) => ({ from: decimalToMicros(tierDoc.from), rate: tierDoc.rate }));
    const current = tiers[Math.min(tier, tiers.length - 1)];
    const next = tiers[tier + 1];
    $("tier-rate").textContent = t("tier_rate", { rate: SB.percent(current.rate, 2) });
    const bar = $("tier-bar");
    const progress = $("tier-progress");
    if (next) {
      const span = next.from - current.from;
      const done = baseMicros - current.from;
      const width = widthPercent(done, span);
      bar.style.width = width + "%";
      progress.setAttribute("aria-valuenow", String(Math.round(width)));
      const missing = next.from - baseMicros;
      $("tier-next").textContent = t("tier_to_next", {
        amount: money(missing > 0n ? missing : 0n, currency),
        n: tier + 2,
        rate: SB.percent(next.rate, 2),
      });
    } else {
      bar.style.width = "100%";
      progress.setAttribute("aria-valuenow", "100");
      $("tier-next").textContent = t("tier_top");
    }
    const list = $("tier-list");
    list.replaceChildren(
      ...tiers.map((item, index) =>
        el(
          "li",
          { class: index === tier ? "current" : null, "aria-current": index === tier ? "true" : null },
          el("span", { text: t("tier_n", { n: index + 1 }) }),
          el("span", { class: "muted", text: t("tier_from", { amount: money(item.from, currency, 0) }) }),
          el("strong", { text: SB.percent(item.rate, 2) })
        )
      )
    );
  }

  async function loadSummary() {
    try {
      state.summary = await api("GET", base + "/commissions");
      renderSummary();
    } catch (error) {
      $("ticker").textContent = "–";
      $("ticker-sub").textContent = t("load_failed") + ": " + error.message;
    }
  }

  async function loadPlan() {
    try {
      state.plan = await api("GET", base + "/commission-plan");
    } catch (error) {
      state.plan = null;
    }
    if (state.summary) renderSummary();
  }

  function noteLatest(entry) {
    if (entry.position <= state.latest.position) return false;
    state.latest = {
      position: entry.position,
      month: entry.month,
      total: BigInt(entry.month_commission_micros) + BigInt(entry.month_bonus_micros),
      commission: BigInt(entry.month_commission_micros),
      bonus: BigInt(entry.month_bonus_micros),
      base: BigInt(entry.base_micros),
      tier: entry.tier,
      rate: entry.rate,
    };
    return true;
  }

  function renderLast() {
    const entry = state.entries[0];
    $("ticker-last").textContent = entry
      ? t("ticker_last", {
          amount: money(entry.amount_micros, entry.currency),
          name: entry.customer_id ? customerName(entry.customer_id) : "–",
          at: SB.dateTime(entry.occurred_at, true),
        })
      : t("entries_empty");
  }

  function addEntries(entries) {
    for (const entry of entries) {
      if (state.entryIds.has(entry.entry_id)) continue;
      state.entryIds.add(entry.entry_id);
      state.lastPosition = Math.max(state.lastPosition, entry.position);
      state.entries.push(entry);
    }
    state.entries.sort((a, b) => b.position - a.position);
    state.entries = state.entries.slice(0, ENTRIES_SHOWN);
    state.entryIds = new Set(state.entries.map((e) => e.entry_id));
  }

  // Today's entries by time only (the card is narrow); older ones by date and time.
  const timeOnly = new Intl.DateTimeFormat(SB.locale, Object.assign({ timeStyle: "medium" }, me.timezone ? { timeZone: me.timezone } : {}));
  const dayOnly = new Intl.DateTimeFormat(SB.locale, Object.assign({ dateStyle: "short" }, me.timezone ? { timeZone: me.timezone } : {}));
  function shortTime(iso) {
    const at = new Date(iso);
    return dayOnly.format(at) === dayOnly.format(new Date()) ? timeOnly.format(at) : SB.dateTime(iso);
  }

  function renderEntries(flashIds) {
    const tbody = $("entries-table").querySelector("tbody");
    renderLast();
    if (!state.entries.length) {
      emptyRow(tbody, 6, t("entries_empty"));
      return;
    }
    fillRows(
      tbody,
      state.entries.map((entry) => {
        const row = el(
          "tr",
          { "data-entry": entry.entry_id },
          el("td", { text: shortTime(entry.occurred_at), title: SB.dateTime(entry.occurred_at, true) }),
          el("td", { class: "wrap", text: entry.customer_id ? customerName(entry.customer_id) : "–" }),
          el("td", {}, el("span", { class: "badge kind-" + entry.kind, text: label("kind_", entry.kind) })),
          el("td", { class: "num", text: entry.base_delta_micros ? money(entry.base_delta_micros, entry.currency) : "–" }),
          el("td", { class: "num " + (BigInt(entry.amount_micros) < 0n ? "negative" : "positive"), text: money(entry.amount_micros, entry.currency, 2) }),
          el("td", { class: "num", text: money(BigInt(entry.month_commission_micros) + BigInt(entry.month_bonus_micros), entry.currency) })
        );
        if (flashIds && flashIds.has(entry.entry_id)) SB.flash(row);
        return row;
      })
    );
  }

  // The month's newest entries (newest first, one request); also what catches up after
  // missed live messages. Whole months page through /commissions/entries.
  async function loadEntries() {
    const tbody = $("entries-table").querySelector("tbody");
    try {
      const doc = await api("GET", base + "/commissions/latest?limit=" + ENTRIES_SHOWN);
      addEntries(doc.entries);
      for (const entry of doc.entries) noteLatest(entry);
      renderEntries();
      if (state.summary) renderSummary();
    } catch (error) {
      failPanel(tbody, 6, error);
    }
  }

  let refreshTimer = 0;
  let kpiTimer = 0;
  function onCommission(message) {
    if (message.reseller_id !== resellerId) return;
    const fresh = new Set();
    if (!state.entryIds.has(message.entry_id)) fresh.add(message.entry_id);
    addEntries([message]);
    renderEntries(fresh);
    if (noteLatest(message) && state.summary && message.month === state.summary.month) renderSummary();
    // the month's figures from the server, once the burst has passed
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refreshCommissions, REFRESH_DEBOUNCE_MS);
    clearTimeout(kpiTimer);
    kpiTimer = setTimeout(loadKpis, KPI_DEBOUNCE_MS);
  }

  let refreshing = false;
  async function refreshCommissions() {
    if (refreshing) {
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(refreshCommissions, REFRESH_DEBOUNCE_MS);
      return;
    }
    refreshing = true;
    try {
      await Promise.all([loadSummary(), loadEntries()]);
    } finally {
      refreshing = false;
    }
  }

  // -- 2. customers -------------------------------------------------------------------------------
  async function loadCustomers() {
    const tbody = $("customers-table").querySelector("tbody");
    try {
      const all = [];
      let cursor = null;
      let pages = 0;
      do {
        const doc = await api("GET", "/v2/customers?limit=500" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
        all.push(...doc.items);
        cursor = doc.next_cursor;
        pages += 1;
      } while (cursor && pages < CUSTOMER_PAGES_MAX);
      all.sort((a, b) => a.name.localeCompare(b.name, SB.locale));
      state.customers = all;
      state.byId = new Map(all.map((c) => [c.id, c]));
      $("customers-count").textContent = String(all.length);
      fillCreditSelect();
      applyFilter();
      renderEntries();
    } catch (error) {
      failPanel(tbody, 5, error);
    }
  }

  function applyFilter() {
    const query = $("customer-search").value.trim().toLocaleLowerCase(SB.locale);
    const status = $("customer-status").value;
    state.filtered = state.customers.filter(
      (c) => (!status || c.status === status) && (!query || c.name.toLocaleLowerCase(SB.locale).includes(query) || c.id.toLowerCase().includes(query))
    );
    state.pageIndex = 0;
    renderCustomers();
  }

  function balanceText(id) {
    const balance = state.balances.get(id);
    return balance ? money(balance.micros, balance.currency) : "…";
  }

  function renderCustomers() {
    const tbody = $("customers-table").querySelector("tbody");
    const pages = Math.max(1, Math.ceil(state.filtered.length / PAGE_SIZE));
    state.pageIndex = Math.min(state.pageIndex, pages - 1);
    const visible = state.filtered.slice(state.pageIndex * PAGE_SIZE, (state.pageIndex + 1) * PAGE_SIZE);
    $("customers-page").textContent = t("page_of", { page: state.pageIndex + 1, pages, count: state.filtered.length });
    $("customers-prev").disabled = state.pageIndex === 0;
    $("customers-next").disabled = state.pageIndex >= pages - 1;
    if (!state.customers.length) {
      emptyRow(tbody, 5, t("customers_empty"));
      return;
    }
    if (!visible.length) {
      emptyRow(tbody, 5, t("customers_no_match"));
      return;
    }
    fillRows(
      tbody,
      visible.map((c) => {
        const balance = state.balances.get(c.id);
        return el(
          "tr",
          { "data-customer": c.id },
          el("td", { class: "wrap" }, el("div", { class: "cust-name", text: c.name }), el("div", { class: "muted small", text: c.id })),
          el("td", {}, statusBadge(c.status)),
          el("td", { class: "col-currency", text: c.currency }),
          el("td", {
            class: "num balance" + (balance && balance.micros < 0n ? " negative" : ""),
            "data-testid": "balance-" + c.id,
            "data-micros": balance ? balance.micros.toString() : "",
            text: balanceText(c.id),
          }),
          el(
            "td",
            { class: "num col-action" },
            el("button", {
              type: "button",
              class: "btn btn-ghost btn-small",
              text: t("credit_short"),
              "aria-label": t("credit_for", { name: c.name }),
              disabled: c.status === "closed",
              onclick: () => pickForCredit(c.id),
            })
          )
        );
      })
    );
    loadBalances(visible.filter((c) => !state.balances.has(c.id)).map((c) => c.id));
  }

  async function loadBalances(ids) {
    await Promise.all(
      ids.map(async (id) => {
        try {
          const doc = await api("GET", "/v2/customers/" + encodeURIComponent(id) + "/balance");
          setBalance(id, doc.balance_micros, doc.currency, doc.seq, false);
        } catch (error) {
          const cell = balanceCell(id);
          if (cell) cell.textContent = "–";
        }
      })
    );
  }

  function balanceCell(id) {
    return document.querySelector('td.balance[data-testid="balance-' + CSS.escape(id) + '"]');
  }

  function setBalance(id, micros, currency, seq, live) {
    const known = state.balances.get(id);
    if (known && seq !== undefined && seq !== null && known.seq !== null && seq <= known.seq) return;
    const value = BigInt(micros);
    const changed = !known || known.micros !== value;
    state.balances.set(id, { micros: value, currency, seq: seq === undefined ? null : seq });
    const cell = balanceCell(id);
    if (!cell) return;
    cell.textContent = money(value, currency);
    cell.dataset.micros = value.toString();
    cell.classList.toggle("negative", value < 0n);
    if (live && changed) SB.flash(cell);
  }

  function onBalance(message) {
    if (!state.byId.has(message.customer_id)) return; // not one of ours (never expected)
    setBalance(message.customer_id, message.balance_micros, message.currency, message.seq, true);
  }

  // -- 3. KPIs ------------------------------------------------------------------------------------
  async function loadKpis() {
    try {
      renderKpis(await api("GET", base + "/kpis"));
    } catch (error) {
      const text = error.status === 404 ? t("kpis_unavailable") : t("load_failed") + ": " + error.message;
      for (const id of ["kpi-active-sub", "kpi-revenue-sub", "kpi-previous-sub", "kpi-churn-sub"]) $(id).textContent = text;
      $("top-list").replaceChildren(el("li", { class: "empty", text }));
    }
  }

  function renderKpis(k) {
    $("kpi-active").textContent = String(k.customers_active);
    $("kpi-active-sub").textContent = t("kpi_active_sub", { total: k.customers_total, suspended: k.customers_suspended });
    const revenue = k.revenue.length ? k.revenue : [{ currency: state.currency, month_to_date_micros: 0, previous_month_micros: 0 }];
    const main = revenue.find((r) => r.currency === state.currency) || revenue[0];
    $("kpi-revenue").textContent = money(main.month_to_date_micros, main.currency);
    $("kpi-previous").textContent = money(main.previous_month_micros, main.currency);
    const previous = BigInt(main.previous_month_micros);
    const share = ratio(BigInt(main.month_to_date_micros), previous);
    $("kpi-revenue-sub").textContent = share === null ? t("kpi_no_previous") : t("kpi_of_previous", { percent: SB.percent(share, 0) });
    const others = revenue.filter((r) => r !== main);
    $("kpi-previous-sub").textContent = others.length
      ? others.map((r) => money(r.month_to_date_micros, r.currency) + " / " + money(r.previous_month_micros, r.currency)).join(" · ")
      : t("kpi_previous_sub", { month: monthLabel(k.month) });
    $("kpi-churn").textContent = SB.percent(k.churn_rate, 1);
    $("kpi-churn-sub").textContent = t("kpi_churn_sub", { count: k.churned_customers });
    renderTop(k.top_customers);
  }

  function renderTop(top) {
    const list = $("top-list");
    if (!top.length) {
      list.replaceChildren(el("li", { class: "empty", text: t("top_empty") }));
      return;
    }
    const max = top.reduce((m, c) => (BigInt(c.spend_micros) > m ? BigInt(c.spend_micros) : m), 0n);
    list.replaceChildren(
      ...top.map((c) =>
        el(
          "li",
          {},
          el("div", { class: "top-row" }, el("span", { class: "top-name", text: c.name }), el("strong", { class: "num", text: money(c.spend_micros, c.currency) })),
          el("div", { class: "progress thin", "aria-hidden": "true" }, el("span", { style: "width: " + widthPercent(BigInt(c.spend_micros), max) + "%" }))
        )
      )
    );
  }

  // -- 4. credit a customer -------------------------------------------------------------------------
  function fillCreditSelect() {
    const select = $("credit-customer");
    const chosen = select.value;
    const open = state.customers.filter((c) => c.status !== "closed");
    select.replaceChildren(
      el("option", { value: "", text: t("credit_pick") }),
      ...open.map((c) => el("option", { value: c.id, text: c.name + " (" + c.id + ")" }))
    );
    if (chosen && state.byId.has(chosen)) select.value = chosen;
    updateCreditCurrency();
  }

  function updateCreditCurrency() {
    const customer = state.byId.get($("credit-customer").value);
    $("credit-currency").textContent = customer ? customer.currency : state.currency;
  }

  function pickForCredit(id) {
    $("credit-customer").value = id;
    updateCreditCurrency();
    $("credit").scrollIntoView({ behavior: "smooth", block: "start" });
    $("credit-amount").focus({ preventScroll: true });
  }

  function creditMessage(node, text) {
    node.textContent = text;
    node.hidden = !text;
  }

  async function submitCredit(event) {
    event.preventDefault();
    const error = $("credit-error");
    const ok = $("credit-ok");
    creditMessage(error, "");
    creditMessage(ok, "");
    const customerId = $("credit-customer").value;
    const amount = amountText($("credit-amount").value);
    const reason = $("credit-reason").value.trim();
    if (!customerId) return creditMessage(error, t("credit_need_customer"));
    if (amount === null || decimalToMicros(amount) === 0n) {
      $("credit-amount").focus();
      return creditMessage(error, t("credit_bad_amount"));
    }
    if (!reason) {
      $("credit-reason").focus();
      return creditMessage(error, t("credit_need_reason"));
    }
    const button = $("credit-submit");
    button.disabled = true;
    button.textContent = t("credit_sending");
    try {
      // One key per credit: a resubmit of the same credit after an unclear failure (a lost
      // answer) reuses it, so the api applies the credit at most once.
      const attempt = customerId + "|" + amount + "|" + reason;
      if (!state.creditKey || state.creditAttempt !== attempt) {
        state.creditKey = "dash-" + Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
        state.creditAttempt = attempt;
      }
      const doc = await api("POST", "/v2/customers/" + encodeURIComponent(customerId) + "/adjustments", { amount, reason }, { "Idempotency-Key": state.creditKey });
      state.creditKey = null;
      const text = t(doc.amount_micros < 0 ? "credit_debited" : "credit_done", {
        amount: money(doc.amount_micros < 0 ? -BigInt(doc.amount_micros) : doc.amount_micros, doc.currency),
        name: customerName(customerId),
      });
      creditMessage(ok, text);
      SB.toast(text, "ok");
      $("credit-amount").value = "";
      $("credit-reason").value = "";
      showCustomer(customerId);
    } catch (err) {
      creditMessage(error, err instanceof SB.ApiError ? t("credit_failed") + ": " + err.message + " (" + err.code + ")" : String(err));
    } finally {
      button.disabled = false;
      button.textContent = t("credit_submit");
    }
  }

  // Make sure the credited customer's row is on screen, so its balance is seen to move.
  function showCustomer(id) {
    const index = state.filtered.findIndex((c) => c.id === id);
    if (index < 0) {
      $("customer-search").value = "";
      $("customer-status").value = "";
      applyFilter();
      return showCustomer(id);
    }
    const pageIndex = Math.floor(index / PAGE_SIZE);
    if (pageIndex !== state.pageIndex) {
      state.pageIndex = pageIndex;
      renderCustomers();
    }
  }

  // -- 5. fraud alerts ----------------------------------------------------------------------------
  async function loadFraud() {
    const list = $("fraud-list");
    try {
      const doc = await api("GET", "/v2/fraud/suspected?limit=" + FRAUD_SHOWN);
      for (const item of doc.items) addFraud(fraudFromScore(item));
      renderFraud();
    } catch (error) {
      failPanel(list, 0, error);
      $("fraud-count").textContent = "–";
    }
  }

  function fraudFromScore(item) {
    return { id: item.score_id, customer_id: item.customer_id, score: item.score, threshold: item.threshold, kind: item.source, event_id: item.event_id, at: item.occurred_at };
  }

  function addFraud(item) {
    if (state.fraudIds.has(item.id)) return false;
    state.fraudIds.add(item.id);
    state.fraud.push(item);
    state.fraud.sort((a, b) => String(b.at).localeCompare(String(a.at)));
    state.fraud = state.fraud.slice(0, FRAUD_SHOWN);
    return true;
  }

  function renderFraud(freshId) {
    const list = $("fraud-list");
    $("fraud-count").textContent = String(state.fraud.length);
    $("fraud-count").className = "badge " + (state.fraud.length ? "badge-bad" : "badge-ok");
    if (!state.fraud.length) {
      list.replaceChildren(el("li", { class: "empty fraud-empty" }, el("strong", { text: t("fraud_empty") }), el("span", { class: "small", text: t("fraud_empty_sub") })));
      return;
    }
    list.replaceChildren(
      ...state.fraud.map((item) => {
        const li = el(
          "li",
          { class: "fraud-item" },
          el("div", { class: "fraud-top" }, el("strong", { text: customerName(item.customer_id) }), el("span", { class: "badge badge-bad", text: t("fraud_score", { score: SB.percent(String(item.score), 0) }) })),
          el("div", { class: "muted small", text: t("fraud_detail", { kind: label("source_", item.kind || "usage"), threshold: SB.percent(String(item.threshold), 0), at: SB.dateTime(item.at) }) }),
          el("div", { class: "muted small mono", text: item.event_id || "" })
        );
        if (item.id === freshId) SB.flash(li);
        return li;
      })
    );
  }

  function onAlert(message) {
    if (message.kind !== "fraud_suspected") return;
    if (message.reseller_id && message.reseller_id !== resellerId) return;
    const d = message.details || {};
    const item = { id: d.score_id || message.alert_id, customer_id: message.customer_id, score: d.score, threshold: d.threshold, kind: d.source, event_id: d.event_id, at: message.created_at };
    if (addFraud(item)) {
      renderFraud(item.id);
      SB.toast(t("fraud_toast", { name: customerName(message.customer_id) }), "error");
    }
  }

  // -- 6. payouts and statements ---------------------------------------------------------------------
  async function loadPayouts() {
    const tbody = $("payouts-table").querySelector("tbody");
    try {
      const doc = await api("GET", base + "/payouts?limit=20");
      $("payouts-due").textContent = t("payouts_due", { amount: money(doc.due_micros, doc.currency) });
      if (!doc.items.length) return emptyRow(tbody, 5, t("payouts_empty"));
      const items = doc.items.slice().sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
      fillRows(
        tbody,
        items.map((p) =>
          el(
            "tr",
            {},
            el("td", { text: SB.date(p.paid_at || p.created_at) }),
            el("td", { class: "wrap" }, el("code", { text: p.id }), p.failure_reason ? el("div", { class: "small negative", text: p.failure_reason }) : null),
            el("td", { text: label("method_", p.method) }),
            el("td", { class: "num", text: money(p.amount_micros, p.currency) }),
            el("td", {}, statusBadge(p.status, "payout_"))
          )
        )
      );
    } catch (error) {
      $("payouts-due").textContent = "";
      failPanel(tbody, 5, error);
    }
  }

  async function loadStatements() {
    const tbody = $("statements-table").querySelector("tbody");
    try {
      const doc = await api("GET", base + "/statements?limit=24");
      if (!doc.items.length) return emptyRow(tbody, 6, t("statements_empty"));
      const items = doc.items.slice().sort((a, b) => b.month.localeCompare(a.month));
      fillRows(
        tbody,
        items.map((s) => {
          const path = base + "/statements/" + encodeURIComponent(s.month);
          const badgeClass = { unpaid: "badge-warn", carried: "badge-pending", pending: "badge-pending", paid: "badge-paid" }[s.payout_status] || "";
          return el(
            "tr",
            {},
            el("td", { text: monthLabel(s.month) }),
            el("td", { class: "num", text: money(s.base_micros, s.currency) }),
            el("td", { class: "num", text: SB.percent(s.rate, 2) }),
            el("td", { class: "num" }, el("strong", { text: money(s.total_micros, s.currency) })),
            el("td", {}, el("span", { class: "badge " + badgeClass, text: label("statement_", s.payout_status) })),
            el(
              "td",
              { class: "docs" },
              el("a", { href: path + ".pdf", download: "", "aria-label": t("download_pdf", { month: monthLabel(s.month) }), text: "PDF" }),
              el("a", { href: path + ".csv", download: "", "aria-label": t("download_csv", { month: monthLabel(s.month) }), text: "CSV" })
            )
          );
        })
      );
    } catch (error) {
      failPanel(tbody, 6, error);
    }
  }

  // -- your portal ---------------------------------------------------------------------------------
  async function loadPortal() {
    try {
      const r = await api("GET", base);
      const host = window.location.hostname;
      const port = window.location.port ? ":" + window.location.port : "";
      const protocol = window.location.protocol + "//";
      let portalHost = null;
      if (r.slug) {
        // on the white-label host already: it is this host; else <slug>.<base domain>
        const baseDomain = SB.page.base_domain || (host.startsWith(r.slug + ".") ? host.slice(r.slug.length + 1) : /^(127\.|\[|localhost$)/.test(host) ? "localhost" : host);
        portalHost = r.slug + "." + baseDomain;
      }
      const link = $("portal-url");
      if (portalHost) {
        const url = protocol + portalHost + port + "/portal";
        link.textContent = portalHost + port;
        link.href = url;
      } else {
        link.replaceWith(el("span", { class: "muted", text: t("portal_no_slug") }));
      }
      $("portal-domain").textContent = r.custom_domain || t("portal_no_domain");
      $("portal-brand-name").textContent = r.brand_name || r.name;
      if (r.color_primary) $("swatch-primary").style.background = r.color_primary;
      if (r.color_accent) $("swatch-accent").style.background = r.color_accent;
      $("portal-colours").textContent = (r.color_primary || SB.cssVar("--primary")) + " · " + (r.color_accent || SB.cssVar("--accent"));
    } catch (error) {
      $("portal-domain").textContent = t("load_failed");
    }
  }

  // -- wiring --------------------------------------------------------------------------------------
  $("customer-search").addEventListener("input", applyFilter);
  $("customer-status").addEventListener("change", applyFilter);
  $("customers-prev").addEventListener("click", () => { state.pageIndex -= 1; renderCustomers(); });
  $("customers-next").addEventListener("click", () => { state.pageIndex += 1; renderCustomers(); });
  $("credit-customer").addEventListener("change", updateCreditCurrency);
  $("credit-form").addEventListener("submit", submitCredit);

  let connectedOnce = false;
  SB.live(["balances", "commissions", "alerts"], {
    balance: onBalance,
    commission: onCommission,
    alert: onAlert,
    open() {
      // after a reconnect, catch up on what the socket missed
      if (connectedOnce) {
        state.balances.clear();
        renderCustomers();
        refreshCommissions();
      }
      connectedOnce = true;
    },
  });

  loadCustomers().then(() => { loadFraud(); loadEntries(); });
  loadSummary().then(loadPlan);
  loadKpis();
  loadPayouts();
  loadStatements();
  loadPortal();
})();
