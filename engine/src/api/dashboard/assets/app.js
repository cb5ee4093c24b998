// Steward's dashboard: confirmations before actions, and live regions fed by server-sent events.
// Everything works without it (forms post, pages reload); it only adds the confirmations and
// the live updates. The server renders and escapes all HTML it sends.
(() => {
  'use strict';

  // A form (or the button pressed) with data-confirm asks first, naming what will happen.
  document.addEventListener('submit', (ev) => {
    const button = ev.submitter;
    const message = (button && button.dataset.confirm) || ev.target.dataset.confirm;
    if (message && !window.confirm(message)) {
      ev.preventDefault();
    }
  });

  const region = document.querySelector('[data-live]');
  if (!region || !window.EventSource) {
    return;
  }
  // Someone typing in a field of the region keeps it until they leave the field.
  let pending = null;
  const typing = () => {
    const a = document.activeElement;
    return a && region.contains(a) && (a.tagName === 'INPUT' || a.tagName === 'TEXTAREA') && a.value !== '';
  };
  const apply = (html) => {
    if (typing()) {
      pending = html;
      return;
    }
    pending = null;
    region.innerHTML = html;
    region.dataset.updates = String(Number(region.dataset.updates || '0') + 1);
  };
  region.addEventListener('focusout', () => {
    window.setTimeout(() => {
      if (pending !== null && !typing()) {
        apply(pending);
      }
    }, 0);
  });
  const source = new EventSource(region.dataset.live);
  source.addEventListener('open', () => {
    region.dataset.connected = 'true';
  });
  source.addEventListener('update', (ev) => apply(ev.data));
  source.addEventListener('ended', () => {
    source.close();
    const here = window.location.pathname + window.location.search;
    window.location.assign('/login?ended=1&next=' + encodeURIComponent(here));
  });
})();
