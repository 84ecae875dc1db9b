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

  // Elapsed time on running cards ticks every second between server updates.
  function tick() {
    var now = Date.now();
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
    armSecrets(document);
    watchWallet();
    tick();
    setInterval(tick, 1000);
  });
  document.addEventListener("htmx:afterSettle", function (event) {
    armSecrets(event.target);
    watchWallet();
    tick();
  });
})();
