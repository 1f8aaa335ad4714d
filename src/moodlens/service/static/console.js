/* moodlens console: live updates, uploads (file input or drag and drop), job actions.
   Plain JS, no build step, nothing loaded from elsewhere. Every request carries
   X-Requested-With, which the API asks of cookie-authenticated changes (CSRF). */
(() => {
  'use strict';
  const HEADERS = {'X-Requested-With': 'moodlens', 'Accept': 'application/json'};
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  // -- talking to the API ---------------------------------------------------------------
  function loginNeeded() {
    location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search));
  }

  function offline(on) {
    const banner = $('#offline');
    if (banner) banner.hidden = !on;
  }

  /* The API's error text: its `detail` (a string, or FastAPI's list of field errors). */
  function detail(body, status, statusText) {
    const d = body && body.detail;
    if (typeof d === 'string' && d) return d;
    if (Array.isArray(d)) {
      return d.map(e => {
        const where = Array.isArray(e.loc) ? e.loc.filter(x => x !== 'body' && x !== 'query').join('.') : '';
        return (where ? where + ': ' : '') + e.msg;
      }).join('; ');
    }
    return status ? `HTTP ${status} ${statusText || ''}`.trim() : 'the server did not answer';
  }

  async function api(method, url) {
    let r;
    try {
      r = await fetch(url, {method, headers: HEADERS, credentials: 'same-origin', cache: 'no-store'});
    } catch (e) {
      offline(true);
      throw new Error('the server did not answer');
    }
    offline(false);
    if (r.status === 401) {
      loginNeeded();
      throw new Error('log in first');
    }
    const text = await r.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error(detail(body, r.status, r.statusText));
    return body;
  }

  // -- formatting (as the server writes it) ---------------------------------------------
  function seconds(s) {
    if (s === null || s === undefined || isNaN(s)) return '–';
    if (s < 60) return s.toFixed(1) + ' s';
    s = Math.round(s);
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor(s % 3600 / 60)).padStart(2, '0')} min`;
  }

  function size(n) {
    const units = ['B', 'KB', 'MB', 'GB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
  }

  function when(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    const now = new Date();
    const time = d.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit', second: '2-digit'});
    if (d.toDateString() === now.toDateString()) return 'today ' + time;
    return d.toLocaleDateString([], {year: 'numeric', month: 'short', day: 'numeric'}) + ' ' + time;
  }

  function duration(startIso, endIso) {
    if (!startIso) return '–';
    const end = endIso ? Date.parse(endIso) : Date.now();
    return seconds(Math.max(0, (end - Date.parse(startIso)) / 1000));
  }

  function localize(root = document) {
    for (const t of $$('time[datetime]', root)) {
      if (!t.dateTime) continue;
      t.textContent = when(t.dateTime);
      t.title = new Date(t.dateTime).toString();
    }
  }

  function setBar(el, status, fraction) {
    if (!el) return;
    const pct = Math.round(100 * Math.max(0, Math.min(1, fraction || 0)));
    el.className = 'progress s-' + status;
    $('.fill', el).style.width = pct + '%';
    $('.pct', el).textContent = pct + '%';
  }

  function show(el, text) {
    el.textContent = text;
    el.hidden = false;
  }

  // -- the jobs list ----------------------------------------------------------------------
  function fillRow(tr, job) {
    tr.dataset.id = job.id;
    tr.dataset.status = job.status;
    for (const a of $$('a', tr)) a.href = '/jobs/' + job.id;
    $('.c-id a', tr).textContent = '#' + job.id;
    const file = $('.c-file a', tr);
    file.textContent = job.filename;
    file.title = job.filename;
    const badge = $('.c-status .badge', tr);
    badge.className = 'badge s-' + job.status;
    badge.textContent = job.status;
    $('.c-stage', tr).textContent = job.stage || '–';
    setBar($('.c-progress .progress', tr), job.status, job.progress);
    $('.c-attempts', tr).textContent = job.attempts;
    const t = $('.c-created time', tr);
    if (t.dateTime !== job.created_at) {
      t.dateTime = job.created_at;
      t.textContent = when(job.created_at);
      t.title = new Date(job.created_at).toString();
    }
    $('.c-duration', tr).textContent = duration(job.started_at, job.finished_at);
  }

  function jobsPage() {
    const table = $('#jobs');
    const rows = $('#job-rows');
    const template = $('#row-template');
    const empty = $('#empty');
    const params = new URLSearchParams({limit: '100', offset: table.dataset.offset || '0'});
    if (table.dataset.status) params.set('status', table.dataset.status);
    let timer = null;
    let first = true;

    async function poll() {
      clearTimeout(timer);
      try {
        const jobs = await api('GET', '/api/jobs?' + params);
        const have = new Map($$('tr.job', rows).map(tr => [tr.dataset.id, tr]));
        let prev = null;
        for (const job of jobs) {
          let tr = have.get(String(job.id));
          if (tr) {
            have.delete(String(job.id));
          } else {
            tr = template.content.querySelector('tr').cloneNode(true);
            if (!first) tr.classList.add('fresh');
          }
          fillRow(tr, job);
          const want = prev ? prev.nextElementSibling : rows.firstElementChild;
          if (want !== tr) rows.insertBefore(tr, want);
          prev = tr;
        }
        for (const tr of have.values()) tr.remove();
        empty.hidden = jobs.length > 0;
        first = false;
      } catch (e) {
        /* the offline banner says so; try again */
      }
      timer = setTimeout(poll, document.hidden ? 5000 : 1000);
    }

    document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
    localize();
    poll();
    return poll;
  }

  // -- uploading --------------------------------------------------------------------------
  function uploader(pollNow) {
    const form = $('#upload');
    if (!form) return;
    const input = $('#file');
    const drop = $('#drop');
    const title = $('#drop-title');
    const sub = $('#drop-sub');
    const button = $('#upload-btn');
    const stop = $('#upload-abort');
    const progress = $('#upload-progress');
    const progressText = $('#upload-text');
    const err = $('#upload-error');
    const ok = $('#upload-ok');
    const emoji = $('#opt-emoji');
    const blur = $('#opt-blur');
    const titleText = title.textContent;
    const subText = sub.textContent;
    const maxBytes = Number(form.dataset.maxMb || 0) * 1048576;
    let chosen = [];
    let xhr = null;
    let busy = false;

    const syncBlur = () => {
      blur.disabled = !emoji.checked;
      if (!emoji.checked) blur.checked = false;
    };
    emoji.addEventListener('change', syncBlur);
    syncBlur();

    function choose(files) {
      chosen = Array.from(files || []);
      err.hidden = true;
      if (!chosen.length) {
        title.textContent = titleText;
        sub.textContent = subText;
        drop.classList.remove('chosen');
        return;
      }
      const total = chosen.reduce((n, f) => n + f.size, 0);
      title.textContent = chosen.length === 1 ? chosen[0].name : `${chosen.length} videos`;
      sub.textContent = `${size(total)} · ready to upload · click to choose others`;
      drop.classList.add('chosen');
      ok.hidden = true;
    }
    input.addEventListener('change', () => choose(input.files));

    // Drag and drop: onto the zone, or anywhere on the page (rather than the browser opening the file).
    let depth = 0;
    const hasFiles = e => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes('Files');
    window.addEventListener('dragenter', e => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth++;
      drop.classList.add('over');
    });
    window.addEventListener('dragleave', e => {
      if (!hasFiles(e)) return;
      if (--depth <= 0) {
        depth = 0;
        drop.classList.remove('over');
      }
    });
    window.addEventListener('dragover', e => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = busy ? 'none' : 'copy';
    });
    window.addEventListener('drop', e => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      drop.classList.remove('over');
      if (busy || !e.dataTransfer.files.length) return;
      try { input.files = e.dataTransfer.files; } catch (_) { /* older browsers: `chosen` has them */ }
      choose(e.dataTransfer.files);
    });

    function send(file, label) {
      return new Promise((resolve, reject) => {
        const fd = new FormData();
        fd.append('fps', $('#fps').value.trim() || '2');
        fd.append('collection', $('#collection').value.trim());
        fd.append('report', $('#opt-report').checked ? 'true' : 'false');
        fd.append('emoji_video', emoji.checked ? 'true' : 'false');
        fd.append('blur_unknown', blur.checked ? 'true' : 'false');
        fd.append('file', file, file.name);
        xhr = new XMLHttpRequest();
        xhr.open('POST', '/api/videos');
        xhr.setRequestHeader('X-Requested-With', 'moodlens');
        xhr.setRequestHeader('Accept', 'application/json');
        xhr.upload.addEventListener('progress', ev => {
          if (!ev.lengthComputable) return;
          setBar($('.progress', progress), 'running', ev.loaded / ev.total);
          progressText.textContent = `${label}${size(ev.loaded)} of ${size(ev.total)}`;
        });
        xhr.upload.addEventListener('load', () => { progressText.textContent = label + 'checking the video…'; });
        xhr.addEventListener('load', () => {
          let body = null;
          try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
          if (xhr.status === 201 && body && body.job_id) resolve(body.job_id);
          else if (xhr.status === 401) { loginNeeded(); reject(new Error('log in first')); }
          else reject(new Error(detail(body, xhr.status, xhr.statusText)));
        });
        xhr.addEventListener('error', () => reject(new Error(
          'the upload failed: the server is not reachable or closed the connection')));
        xhr.addEventListener('abort', () => reject(new Error('upload stopped')));
        xhr.send(fd);
      });
    }

    function queued(ids) {
      ok.replaceChildren(document.createTextNode(ids.length === 1 ? 'Queued: ' : 'Queued: jobs '));
      ids.forEach((id, i) => {
        if (i) ok.append(', ');
        const a = document.createElement('a');
        a.href = '/jobs/' + id;
        a.textContent = (ids.length === 1 ? 'job #' : '#') + id;
        ok.append(a);
      });
      ok.append('. Its progress shows in the list below.');
      ok.hidden = false;
    }

    form.addEventListener('submit', async e => {
      e.preventDefault();
      if (busy) return;
      err.hidden = true;
      ok.hidden = true;
      if (!chosen.length) {
        show(err, 'Choose a video first: click the box, or drop a file on it.');
        return;
      }
      const fps = Number($('#fps').value.trim() || '2');
      if (!(fps > 0 && fps <= 60)) {
        show(err, 'Frames per second: a number above 0 and at most 60.');
        return;
      }
      const big = maxBytes ? chosen.find(f => f.size > maxBytes) : null;
      if (big) {
        show(err, `${big.name}: ${size(big.size)} is over the server's limit of ${size(maxBytes)}.`);
        return;
      }
      busy = true;
      button.disabled = true;
      stop.hidden = false;
      progress.hidden = false;
      setBar($('.progress', progress), 'running', 0);
      const ids = [];
      for (let i = 0; i < chosen.length; i++) {
        const label = chosen.length > 1 ? `${i + 1} of ${chosen.length}: ` : '';
        try {
          ids.push(await send(chosen[i], label));
          pollNow();
        } catch (failure) {
          const name = chosen[i].name;
          show(err, failure.message.includes(name) ? failure.message : `${name}: ${failure.message}`);
          break;
        }
      }
      busy = false;
      xhr = null;
      button.disabled = false;
      stop.hidden = true;
      progress.hidden = true;
      if (ids.length) {
        queued(ids);
        input.value = '';
        choose([]);
        ok.hidden = false;
      }
    });
    stop.addEventListener('click', () => { if (xhr) xhr.abort(); });
    window.addEventListener('beforeunload', e => {
      if (busy) {
        e.preventDefault();
        e.returnValue = '';
      }
    });
  }

  // -- one job ----------------------------------------------------------------------------
  function signature(job) {
    return `${job.status}|${job.attempts}|${job.stages.length}|${job.stage || ''}|${job.analysis_id || ''}`;
  }

  function jobPage() {
    let box = $('#job');
    if (!box) return;
    const id = box.dataset.job;
    let timer = null;

    /* Render the page again on the server and swap <main> in: no reload, no JS templates. */
    async function refresh() {
      let r;
      try {
        r = await fetch(location.pathname, {headers: HEADERS, credentials: 'same-origin', cache: 'no-store'});
      } catch (e) {
        offline(true);
        return;
      }
      offline(false);
      if (r.redirected && new URL(r.url).pathname === '/login') return loginNeeded();
      if (r.status === 404) return location.assign('/');
      const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
      const fresh = doc.querySelector('#main');
      if (!fresh || !fresh.querySelector('#job')) return;
      $('#main').replaceChildren(...Array.from(fresh.childNodes));
      document.title = doc.title;
      box = $('#job');
      localize();
    }

    async function poll() {
      clearTimeout(timer);
      if (box.dataset.active !== '1') return;
      try {
        const job = await api('GET', `/api/jobs/${id}`);
        if (signature(job) !== box.dataset.signature) {
          await refresh();
        } else {
          setBar($('#job-progress .progress'), job.status, job.progress);
          const d = $('#job-duration');
          if (d) d.textContent = duration(job.started_at, job.finished_at);
        }
      } catch (e) {
        /* offline banner, or the job is gone */
      }
      if (box.dataset.active === '1') timer = setTimeout(poll, document.hidden ? 5000 : 1000);
    }

    document.addEventListener('click', async e => {
      const b = e.target.closest('button[data-action]');
      if (!b) return;
      if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
      const errBox = $('#action-error');
      errBox.hidden = true;
      b.disabled = true;
      if (b.dataset.action === 'delete') {  // stop loading what is about to go (else it answers 404)
        for (const el of $$('#report iframe, video')) el.remove();
      }
      try {
        await api(b.dataset.method || 'POST', b.dataset.url);
        if (b.dataset.action === 'delete') return location.assign('/');
        await refresh();
        poll();
      } catch (failure) {
        show($('#action-error'), failure.message);
        b.disabled = false;
      }
    });
    document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
    localize();
    poll();
  }

  // -- the login page ---------------------------------------------------------------------
  /* Arriving from a link on another site, the browser withholds the SameSite=Strict cookie, so
     the server asked for a login. From this page the cookie is sent: if it still works, go on. */
  async function loginPage() {
    const form = $('#login');
    const next = form && form.dataset.resume;
    if (!next) return;
    try {
      const r = await fetch('/api/jobs?limit=1', {headers: HEADERS, credentials: 'same-origin', cache: 'no-store'});
      if (r.ok) location.replace(next);
    } catch (e) { /* stay here */ }
  }

  // -- start --------------------------------------------------------------------------------
  const pageName = document.body.dataset.page;
  if (pageName === 'jobs') uploader(jobsPage());
  else if (pageName === 'job') jobPage();
  else if (pageName === 'login') loginPage();
  else localize();
})();
