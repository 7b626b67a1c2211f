// Samblik's lookup panel: fills the department cards in as each department answers.
// Served from the gateway (no CDN); the page's CSP allows no inline script.
'use strict';

(function () {
  const root = document.getElementById('opslag');
  if (!root || !root.dataset.stream) {
    return;
  }
  const status = document.getElementById('opslag-status');
  const events = new EventSource(root.dataset.stream);
  let answered = 0;

  function finish(text) {
    events.close();
    for (const card of root.querySelectorAll('.kilde.venter')) {
      card.classList.remove('venter');
      card.classList.add('intet-svar');
      card.dataset.status = 'intet-svar';
      card.removeAttribute('aria-busy');
      const label = card.querySelector('.status');
      if (label) {
        label.textContent = 'Ikke med i opslaget';
      }
    }
    if (status && text) {
      status.textContent = text;
    }
    root.dataset.done = 'true';
  }

  events.addEventListener('kilde', function (event) {
    const message = JSON.parse(event.data);
    const holder = document.createElement('div');
    holder.innerHTML = message.html;
    const card = holder.firstElementChild;
    if (!card) {
      return;
    }
    const waiting = document.getElementById('kilde-' + message.source);
    if (waiting) {
      waiting.replaceWith(card);
    } else {
      root.querySelector('.kilder').append(card);
    }
    answered += 1;
    if (answered === 1) {
      // Time since the lookup was submitted (the navigation that led here).
      root.dataset.firstCardMs = String(Math.round(performance.now()));
    }
    if (status) {
      status.textContent = answered + (answered === 1 ? ' forvaltning har svaret' : ' forvaltninger har svaret');
    }
  });

  events.addEventListener('afvist', function (event) {
    const message = JSON.parse(event.data);
    const box = document.createElement('div');
    box.className = 'afvisning';
    box.innerHTML = message.html;
    root.prepend(box);
    root.dataset.refused = 'true';
    finish('Opslaget blev ikke gennemført.');
  });

  events.addEventListener('faerdig', function () {
    finish('Alle forvaltninger er spurgt.');
  });

  events.onerror = function () {
    if (root.dataset.done !== 'true') {
      finish('Forbindelsen til Samblik blev afbrudt.');
    }
  };
})();
