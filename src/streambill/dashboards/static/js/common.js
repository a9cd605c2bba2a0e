// Shared by every page: page data, messages, the API, money formatting, the live socket.
// Money arrives as integer micros; it is turned into an exact decimal string and only then
// formatted (Intl formats a decimal string exactly, rounding half-even), never via a float.
"use strict";
(function () {
  const pageData = JSON.parse(document.getElementById("page-data").textContent);
  const locale = pageData.lang === "de" ? "de-DE" : "en-GB";

  // Set while signing out: the session's socket closes (4401) and its requests answer 401
  // before the sign-out's own answer arrives; neither may navigate first.
  let signingOut = false;
  function loginPath() {
    return "/" + pageData.area + "/login?lang=" + encodeURIComponent(pageData.lang);
  }

  function t(key, vars) {
    let text = (pageData.messages && pageData.messages[key]) || key;
    if (vars) {
      for (const [name, value] of Object.entries(vars)) text = text.split("{" + name + "}").join(String(value));
    }
    return text;
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // headers: extra request headers, e.g. {"Idempotency-Key": ...} for money-moving writes.
  async function api(method, path, body, headers) {
    const init = { method, credentials: "same-origin", headers: Object.assign({ Accept: "application/json" }, headers || {}) };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401 && pageData.me && !signingOut) {
      window.location.assign(loginPath());
      throw new ApiError(401, "unauthorized", "signed out");
    }
    if (response.status === 204) return null;
    const text = await response.text();
    const doc = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const error = (doc && doc.error) || {};
      const code = error.code || "http_" + response.status;
      // the page's own words for codes whose server text is technical (and English); the
      // server's text otherwise (it names the field or the conflict)
      const local = pageData.messages && pageData.messages["error_" + code];
      throw new ApiError(response.status, code, local || error.message || response.statusText);
    }
    return doc;
  }

  // micros (integer, Number or BigInt or numeric string) -> exact decimal string "-12.345678"
  function microsToDecimal(micros) {
    let value = BigInt(micros);
    const negative = value < 0n;
    if (negative) value = -value;
    const units = value / 1000000n;
    const fraction = (value % 1000000n).toString().padStart(6, "0");
    return (negative ? "-" : "") + units.toString() + "." + fraction;
  }

  const moneyFormats = new Map();
  // digits: decimals shown (default 2; 0 for round figures such as quick-pick amounts).
  function money(micros, currency, digits) {
    if (micros === null || micros === undefined) return "–";
    const places = digits === undefined ? 2 : digits;
    const key = currency + "|" + places;
    let format = moneyFormats.get(key);
    if (!format) {
      format = new Intl.NumberFormat(locale, {
        style: "currency", currency, minimumFractionDigits: places,
        maximumFractionDigits: places, roundingMode: "halfEven",
      });
      moneyFormats.set(key, format);
    }
    return format.format(microsToDecimal(micros));
  }

  function decimal(text, maxDigits) {
    if (text === null || text === undefined) return "–";
    return new Intl.NumberFormat(locale, { maximumFractionDigits: maxDigits === undefined ? 3 : maxDigits }).format(String(text));
  }

  function percent(fractionText, digits) {
    if (fractionText === null || fractionText === undefined) return "–";
    return new Intl.NumberFormat(locale, { style: "percent", maximumFractionDigits: digits === undefined ? 1 : digits }).format(String(fractionText));
  }

  function dateTime(iso, withSeconds) {
    if (!iso) return "–";
    const options = { dateStyle: "medium", timeStyle: withSeconds ? "medium" : "short" };
    if (pageData.me && pageData.me.timezone) options.timeZone = pageData.me.timezone;
    return new Intl.DateTimeFormat(locale, options).format(new Date(iso));
  }

  function date(iso) {
    if (!iso) return "–";
    const options = { dateStyle: "medium" };
    if (pageData.me && pageData.me.timezone) options.timeZone = pageData.me.timezone;
    return new Intl.DateTimeFormat(locale, options).format(new Date(iso));
  }

  // el("td", {class: "num", text: "1"}, child, ...): small DOM builder; text is never HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function toast(message, kind) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const item = el("div", { class: "toast toast-" + (kind || "info"), text: message });
    box.append(item);
    setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
  }

  function showError(error) {
    const message = error instanceof ApiError ? error.message + " (" + error.code + ")" : String(error);
    toast(t("error") + ": " + message, "error");
  }

  // Flash an element whose value just changed (live updates).
  function flash(node) {
    if (!node) return;
    node.classList.remove("flash");
    void node.offsetWidth;
    node.classList.add("flash");
  }

  // The live socket: authenticates with the page's session cookie, subscribes, dispatches
  // {"type": ...} messages to handlers[type], reconnects with backoff. Returns {close()}.
  function live(channels, handlers) {
    const status = document.getElementById("live-status");
    let socket = null;
    let closed = false;
    let delayMs = 500;
    function setState(state) {
      if (!status) return;
      status.dataset.state = state;
      const label = t(state === "on" ? "live_on" : state === "off" ? "live_off" : "live_connecting");
      status.title = label;
      status.querySelector(".live-label").textContent = label;
    }
    function connect() {
      const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      socket = new WebSocket(scheme + window.location.host + "/v2/stream");
      setState("connecting");
      socket.addEventListener("open", () => socket.send(JSON.stringify({ session: "cookie" })));
      socket.addEventListener("message", (event) => {
        const message = JSON.parse(event.data);
        if (message.type === "welcome") {
          socket.send(JSON.stringify({ subscribe: channels }));
        } else if (message.type === "subscribed") {
          delayMs = 500;
          setState("on");
          if (handlers.open) handlers.open();
        } else if (handlers[message.type]) {
          handlers[message.type](message);
        }
      });
      socket.addEventListener("close", (event) => {
        setState("off");
        if (closed) return;
        if (signingOut) return; // the sign-out below ends the session and navigates itself
        if (event.code === 4401) { window.location.assign(loginPath()); return; }
        if (event.code === 1008) return; // refused by policy (origin): retrying cannot help
        setTimeout(connect, delayMs);
        delayMs = Math.min(delayMs * 2, 10000);
      });
    }
    connect();
    return { close() { closed = true; if (socket) socket.close(); } };
  }

  // A line/bar chart with uPlot when it is installed; else a note in the container. A new
  // chart in the same container replaces the old one (its plot and resize observer).
  const charts = new WeakMap();
  function chart(container, options, data) {
    const old = charts.get(container);
    if (old) { old.observer.disconnect(); old.plot.destroy(); charts.delete(container); }
    container.replaceChildren();
    if (typeof window.uPlot !== "function") {
      container.append(el("p", { class: "muted", text: t("charts_missing") }));
      return null;
    }
    const width = Math.max(container.clientWidth, 280);
    const plot = new window.uPlot(Object.assign({ width, height: 220 }, options), data, container);
    const observer = new ResizeObserver(() => plot.setSize({ width: Math.max(container.clientWidth, 280), height: 220 }));
    observer.observe(container);
    charts.set(container, { plot, observer });
    return plot;
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      signingOut = true;
      try {
        const answer = await api("POST", "/logout?area=" + encodeURIComponent(logout.dataset.area));
        window.location.assign(answer.redirect);
      } catch (error) {
        signingOut = false;
        showError(error);
      }
    });
  }

  window.SB = { page: pageData, locale, t, api, ApiError, money, microsToDecimal, decimal, percent, dateTime, date, el, toast, showError, flash, live, chart, cssVar };
})();
