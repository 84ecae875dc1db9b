// Vivix Studio: small progressive enhancements. Every page works without this file.
(function () {
  "use strict";

  // Theme: auto → dark → light, remembered in a cookie so the server renders it (no flash).
  function setTheme(theme) {
    document.documentElement.dataset.theme = theme;
    document.cookie = "vivix_theme=" + theme + "; path=/; max-age=31536000; samesite=lax";
  }
  function currentTheme() {
    var theme = document.documentElement.dataset.theme;
    if (theme === "auto") {
      return window.matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark";
    }
    return theme;
  }

  // Copy buttons: data-copy="#element-id" copies that element's text.
  function copyFrom(button) {
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.textContent.trim();
    var done = function () {
      var label = button.querySelector(".copy-label");
      if (label) {
        var before = label.textContent;
        label.textContent = "Copied";
        setTimeout(function () { label.textContent = before; }, 1600);
      }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { selectText(source); });
    } else {
      selectText(source);
      try { document.execCommand("copy"); done(); } catch (e) { /* selected for manual copy */ }
    }
  }
  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // Secrets shown once: hidden after data-hide-after seconds.
  function armSecrets(root) {
    root.querySelectorAll("[data-hide-after]").forEach(function (box) {
      if (box.dataset.armed) return;
      box.dataset.armed = "1";
      var seconds = parseInt(box.getAttribute("data-hide-after"), 10) || 30;
      var counter = box.querySelector("[data-countdown]");
      var left = seconds;
      var timer = setInterval(function () {
        left -= 1;
        if (counter) counter.textContent = String(Math.max(left, 0));
        if (left <= 0) {
          clearInterval(timer);
          box.classList.add("is-hidden");
          var value = box.querySelector(".secret-value code");
          if (value) value.textContent = "";
        }
      }, 1000);
    });
  }

  // Elapsed time and the time left on running cards tick every second between updates.
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-eta-until]").forEach(function (node) {
      var until = Date.parse(node.getAttribute("data-eta-until"));
      if (isNaN(until)) return;
      var left = Math.round((until - now) / 1000);
      node.textContent = left > 0 ? " · about " + left + " s left" : " · almost done";
    });
    document.querySelectorAll("[data-elapsed-since]").forEach(function (node) {
      var started = Date.parse(node.getAttribute("data-elapsed-since"));
      if (isNaN(started)) return;
      var seconds = Math.max(0, Math.round((now - started) / 1000));
      node.textContent = seconds < 60 ? seconds + " s" : Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    });
  }

  // The wallet pulses when its balance changes (an out-of-band swap after a settlement).
  var lastBalance = null;
  function watchWallet() {
    var amount = document.getElementById("wallet-balance");
    if (!amount) return;
    var value = amount.getAttribute("data-balance");
    if (lastBalance !== null && value !== lastBalance) {
      var wallet = document.getElementById("wallet");
      if (wallet) {
        wallet.classList.remove("is-changed");
        void wallet.offsetWidth;
        wallet.classList.add("is-changed");
      }
    }
    lastBalance = value;
  }

  // Live cards (Generate, a generation's page) and gallery tiles (History) re-read
  // themselves (htmx, hx-get) on "vivix:changed". The account's event stream says when:
  // one connection for every card on the page (a stream per card would use up the
  // browser's six connections to this site); a status or queue change re-reads its card,
  // progress moves the bar in place. Without EventSource, or while the stream is down,
  // cards are re-read every second instead; while it is open, every 30 s as well, in case
  // a change went by unseen. The markup's hx-trigger never changes (htmx.process would
  // forget a read in flight and let a stale answer land after a fresh one), and a card
  // syncs with "this:replace": a change seen during a read aborts it and reads again, so
  // an answer rendered before the change can never be the last word.
  var FINAL = { completed: true, failed: true, canceled: true };
  var SAFETY_READ_S = 30;
  var stream = null;
  var streamRefused = false;
  var sinceRead = 0;

  function liveCards(id) {
    return document.querySelectorAll(
      id ? '[data-live-generation="' + id + '"]' : "[data-live-generation]"
    );
  }
  function read(card) {
    window.htmx.trigger(card, "vivix:changed");
  }
  function refresh(id) {
    liveCards(id).forEach(read);
  }
  function streaming() {
    return stream !== null && stream.open;
  }
  function showLiveMode() {
    document.documentElement.dataset.live = streaming() ? "stream" : "poll";
  }
  function pollTick() {
    if (!window.htmx) return;
    sinceRead += 1;
    if (streaming() && sinceRead < SAFETY_READ_S) return;
    sinceRead = 0;
    liveCards().forEach(function (card) {
      // A read still in flight is let finish: replacing it every second would starve it.
      if (!card.classList.contains("htmx-request")) read(card);
    });
  }
  function showProgress(generation) {
    if (typeof generation.progress !== "number") return;
    var percent = Math.round(generation.progress * 100);
    liveCards(generation.generation_id).forEach(function (card) {
      var bar = card.querySelector("progress");
      var label = card.querySelector("[data-percent]");
      var eta = card.querySelector("[data-eta]");
      if (bar) bar.value = percent;
      if (label) label.textContent = " · " + percent + "%";
      if (eta && "eta_ms" in generation) {
        if (generation.eta_ms) {
          eta.setAttribute("data-eta-until", new Date(Date.now() + generation.eta_ms).toISOString());
        } else {
          eta.removeAttribute("data-eta-until");
          eta.textContent = "";
        }
      }
    });
  }
  function onChange(event) {
    var generation;
    try { generation = JSON.parse(event.data); } catch (e) { return; }
    if (!generation || !generation.generation_id) return;
    // Progress moves bars in place; only a new status or queue position re-reads the
    // card (a gallery tile shows no progress).
    if (event.type === "progress" && !FINAL[generation.status]) {
      showProgress(generation);
      return;
    }
    refresh(generation.generation_id);
  }
  function openStream() {
    var source;
    try {
      source = new EventSource("/api/v1/events");
    } catch (e) {
      streamRefused = true;
      return;
    }
    stream = { source: source, open: false };
    source.addEventListener("open", function () {
      stream.open = true;
      sinceRead = 0;
      showLiveMode();
      // Anything that changed between the page and the stream: read it once.
      liveCards().forEach(read);
    });
    source.addEventListener("generation", onChange);
    source.addEventListener("progress", onChange);
    source.addEventListener("error", function () {
      // Dropped (a restart, a proxy): cards poll while EventSource reconnects; refused
      // (CLOSED): they poll for good.
      if (!stream || stream.source !== source) return;
      stream.open = false;
      if (source.readyState === EventSource.CLOSED) {
        stream = null;
        streamRefused = true;
      }
      showLiveMode();
    });
  }
  function watchLiveCards() {
    if (!window.EventSource || !window.htmx || streamRefused) return;
    if (!liveCards().length) {
      if (stream) { stream.source.close(); stream = null; showLiveMode(); }  // nothing left to watch
      return;
    }
    if (!stream) openStream();
  }

  // Close open menus with Escape, and when clicking elsewhere.
  function closeMenus(except) {
    document.querySelectorAll("details.menu[open], details.user-menu[open]").forEach(function (d) {
      if (d !== except) d.removeAttribute("open");
    });
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    var copy = target.closest && target.closest("[data-copy]");
    if (copy) { event.preventDefault(); copyFrom(copy); return; }
    if (target.closest && target.closest("#theme-toggle")) {
      setTheme(currentTheme() === "dark" ? "light" : "dark");
      return;
    }
    var confirmable = target.closest && target.closest("[data-confirm]");
    if (confirmable && !window.confirm(confirmable.getAttribute("data-confirm"))) {
      event.preventDefault();
      return;
    }
    closeMenus(target.closest && target.closest("details"));
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") closeMenus(null);
  });
  document.addEventListener("DOMContentLoaded", function () {
    showLiveMode();
    watchLiveCards();
    setInterval(pollTick, 1000);
    armSecrets(document);
    watchWallet();
    tick();
    setInterval(tick, 1000);
  });
  // Every element htmx swaps in (a new card, a card refreshed by outerHTML).
  document.addEventListener("htmx:load", function () {
    watchLiveCards();
  });
  document.addEventListener("htmx:afterSettle", function (event) {
    armSecrets(event.target);
    watchWallet();
    tick();
  });
})();
