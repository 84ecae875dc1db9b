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

  // Live cards (Generate, a generation's page) and gallery tiles (History): a running one
  // polls its own URL every second (htmx, in the markup). Here
  // the account's event stream takes over, one connection for every card on the page (a
  // stream per card would use up the browser's six connections to this site): while it
  // is open the cards stop polling; a status or queue change refreshes its card, progress
  // moves the bar in place. Without EventSource, or while the stream is down, cards poll.
  var POLL = "every 1s, vivix:changed";
  var QUIET = "vivix:changed";
  var FINAL = { completed: true, failed: true, canceled: true };
  var stream = null;
  var streamRefused = false;

  function liveCards(id) {
    return document.querySelectorAll(
      id ? '[data-live-generation="' + id + '"]' : "[data-live-generation]"
    );
  }
  function setTrigger(card, trigger) {
    if (card.getAttribute("hx-trigger") === trigger) return;
    card.setAttribute("hx-trigger", trigger);
    window.htmx.process(card);  // re-initialises the element: its poll timer is cleared
  }
  function refresh(id) {
    liveCards(id).forEach(function (card) { window.htmx.trigger(card, "vivix:changed"); });
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
      liveCards().forEach(function (card) {
        setTrigger(card, QUIET);
        // Anything that changed between the page and the stream: read it once.
        window.htmx.trigger(card, "vivix:changed");
      });
    });
    source.addEventListener("generation", onChange);
    source.addEventListener("progress", onChange);
    source.addEventListener("error", function () {
      // Dropped (a restart, a proxy): cards poll while EventSource reconnects; refused
      // (CLOSED): they poll for good.
      if (!stream || stream.source !== source) return;
      stream.open = false;
      liveCards().forEach(function (card) { setTrigger(card, POLL); });
      if (source.readyState === EventSource.CLOSED) {
        stream = null;
        streamRefused = true;
      }
    });
  }
  function watchLiveCards() {
    if (!window.EventSource || !window.htmx || streamRefused) return;
    var cards = liveCards();
    if (!cards.length) {
      if (stream) { stream.source.close(); stream = null; }  // nothing left to watch
      return;
    }
    if (!stream) { openStream(); return; }
    if (stream.open) cards.forEach(function (card) { setTrigger(card, QUIET); });
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
    watchLiveCards();
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
