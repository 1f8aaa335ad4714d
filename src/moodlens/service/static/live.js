/* moodlens live pages: the sessions list (polls the API every second) and one session's
   dashboard (server-sent events), its charts drawn here as inline SVG. Plain JS, no build
   step, nothing loaded from elsewhere; every fetch carries X-Requested-With (console.js). */
(() => {
  'use strict';
  const HEADERS = {'X-Requested-With': 'moodlens', 'Accept': 'application/json'};
  const NS = 'http://www.w3.org/2000/svg';
  const W = 800, H = 240;  // the charts' viewBox
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  const offline = on => { const b = $('#offline'); if (b) b.hidden = !on; };
  const loginNeeded = () => location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search));

  // -- formatting (as live_pages.py and console.js write it) -----------------------------------
  function seconds(s) {
    if (s === null || s === undefined || isNaN(s)) return '–';
    if (s < 60) return s.toFixed(1) + ' s';
    s = Math.round(s);
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor(s % 3600 / 60)).padStart(2, '0')} min`;
  }
  const lag = s => (s === null || s === undefined || isNaN(s)) ? '–' : s < 10 ? s.toFixed(2) + ' s' : seconds(s);
  function clock(t) {  // seconds of video: m:ss or h:mm:ss
    t = Math.max(0, Math.round(t));
    const ss = String(t % 60).padStart(2, '0');
    if (t < 3600) return `${Math.floor(t / 60)}:${ss}`;
    return `${Math.floor(t / 3600)}:${String(Math.floor(t % 3600 / 60)).padStart(2, '0')}:${ss}`;
  }
  function when(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    const time = d.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit', second: '2-digit'});
    if (d.toDateString() === new Date().toDateString()) return 'today ' + time;
    return d.toLocaleDateString([], {year: 'numeric', month: 'short', day: 'numeric'}) + ' ' + time;
  }
  const text = (el, value) => { value = String(value); if (el && el.textContent !== value) el.textContent = value; };
  function setTime(el, iso, suffix = '') {
    if (!el) return;
    if (el.dateTime !== (iso || '')) { el.dateTime = iso || ''; el.title = iso ? new Date(iso).toString() : ''; }
    text(el, when(iso) + suffix);
  }
  function svg(tag, attrs = {}) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  }

  // -- the sessions list ------------------------------------------------------------------------
  function listPage() {
    const recentMs = Number($('#closed-sessions').dataset.recentS) * 1000;
    let timer = null;

    function common(tr, s) {
      tr.dataset.id = s.id;
      const name = $('.c-name a', tr);
      name.href = '/live/' + s.id;
      text(name, s.name);
      name.title = s.name;
      text($('.c-device', tr), s.device);
      text($('.c-mode', tr), s.mode);
      text($('.c-frames', tr), s.frames);
      text($('.c-faces', tr), s.faces);
    }
    function fillLive(tr, s) {
      common(tr, s);
      text($('.c-backlog', tr), s.backlog_batches === null ? '–' : s.backlog_batches);
      text($('.c-lag', tr), lag(s.ingest_lag_s));
      setTime($('.c-last time', tr), s.last_batch_at);
      $('.c-dash', tr).href = '/live/' + s.id;
      $('.c-json', tr).href = '/api/live/sessions/' + s.id;
    }
    function fillClosed(tr, s) {
      common(tr, s);
      setTime($('.c-closed time', tr), s.closed_at);
      const cell = $('.c-links', tr);
      const href = s.analysis_id === null ? null : `/api/analyses/${s.analysis_id}/report.html`;
      const a = $('a.c-report', cell);
      if (href && (!a || a.getAttribute('href') !== href)) {
        const link = document.createElement('a');
        link.className = 'c-report';
        link.href = href;
        link.textContent = 'Report';
        cell.replaceChildren(link);
      } else if (!href && a) {
        cell.replaceChildren('–');
      }
    }
    /* Rows keyed by session id, in the API's order (newest first), updated in place. */
    function sync(tbody, template, empty, items, fill) {
      const have = new Map($$('tr.session', tbody).map(tr => [tr.dataset.id, tr]));
      let prev = null;
      for (const s of items) {
        let tr = have.get(String(s.id));
        if (tr) have.delete(String(s.id));
        else tr = template.content.querySelector('tr').cloneNode(true);
        fill(tr, s);
        const want = prev ? prev.nextElementSibling : tbody.firstElementChild;
        if (want !== tr) tbody.insertBefore(tr, want);
        prev = tr;
      }
      for (const tr of have.values()) tr.remove();
      empty.hidden = items.length > 0;
    }

    async function poll() {
      clearTimeout(timer);
      try {
        const r = await fetch('/api/live/sessions?all=true&limit=500', {headers: HEADERS, credentials: 'same-origin',
                                                                         cache: 'no-store'});
        offline(false);
        if (r.status === 401) return loginNeeded();
        if (r.ok) {
          const all = await r.json();
          const now = Date.now();
          sync($('#live-rows'), $('#live-row'), $('#live-empty'), all.filter(s => s.status === 'live'), fillLive);
          sync($('#closed-rows'), $('#closed-row'), $('#closed-empty'), all.filter(
            s => s.status !== 'live' && s.closed_at && now - Date.parse(s.closed_at) < recentMs), fillClosed);
        }
      } catch (e) {
        offline(true);
      }
      timer = setTimeout(poll, document.hidden ? 5000 : 1000);
    }
    document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
    poll();
  }

  // -- charts -----------------------------------------------------------------------------------
  /* The seconds a chart spans: the last `span` of the session, or from its first second while it
     is younger (at least 30 s wide, so a new session's lines grow from the left). */
  function xRange(points, end, span) {
    const first = points.length ? points[0].t : end;
    const start = Math.max(end - span + 1, first);
    return {start, width: Math.max(end - start, 29)};
  }

  /* The y labels (0-100) and the time axis around a chart's SVG. */
  function frameChart(chart) {
    const wrap = document.createElement('div');
    wrap.className = 'chart-wrap';
    chart.before(wrap);
    wrap.append(chart);
    for (const v of [100, 75, 50, 25]) {
      const label = document.createElement('span');
      label.className = 'ylab';
      label.style.top = (100 - v) + '%';
      label.textContent = v;
      label.setAttribute('aria-hidden', 'true');
      wrap.append(label);
    }
    const axis = document.createElement('div');
    axis.className = 'axis';
    axis.setAttribute('aria-hidden', 'true');
    axis.append(document.createElement('span'), document.createElement('span'), document.createElement('span'));
    wrap.after(axis);
  }

  /* One line per emotion, 0-100 up the side; a line breaks where no face was seen or seconds
     are missing. */
  function drawChart(box, points, emotions, range) {
    const chart = $('svg.chart', box);
    if (!chart.querySelector('g.lines')) {
      const grid = svg('g', {class: 'grid'});
      for (const v of [25, 50, 75]) {
        grid.append(svg('line', {x1: 0, x2: W, y1: H * (1 - v / 100), y2: H * (1 - v / 100)}));
      }
      const lines = svg('g', {class: 'lines'});
      for (const e of emotions) lines.append(svg('path', {class: `line e-${e}`, 'data-emotion': e, d: ''}));
      chart.append(grid, lines);
    }
    const {start, width} = range;
    const x = t => ((t - start) / width * W).toFixed(1);
    const y = v => (H * (1 - v / 100)).toFixed(1);
    for (const path of $$('path.line', chart)) {
      const e = path.dataset.emotion;
      let d = '', last = null;
      for (const p of points) {
        const v = p.emotions[e];
        if (p.t < start || v === null || v === undefined) { last = null; continue; }
        d += (last === null || p.t - last > 2 ? 'M' : 'L') + x(p.t) + ',' + y(v);
        last = p.t;
      }
      if (path.getAttribute('d') !== d) path.setAttribute('d', d);
    }
    chart.dataset.points = points.filter(p => p.t >= start).length;
    chart.dataset.end = points.length ? points[points.length - 1].t : '';
    const [a, b, c] = $('.axis', box).children;
    text(a, clock(start));
    text(b, clock(start + width / 2));
    text(c, clock(start + width));
  }

  function describe(points, emotions) {
    const last = [...points].reverse().find(p => emotions.some(e => p.emotions[e] !== null));
    if (!last) return 'No face seen yet.';
    const top = emotions.map(e => [e, last.emotions[e] || 0]).sort((a, b) => b[1] - a[1]).slice(0, 3);
    return `At ${clock(last.t)}: ` + top.map(([e, v]) => `${e} ${Math.round(v)}`).join(', ') + '.';
  }

  // -- one session's dashboard --------------------------------------------------------------------
  function sessionPage() {
    const root = $('#live');
    const id = root.dataset.session;
    const emotions = root.dataset.emotions.split(',');
    const fw = Number(root.dataset.width) || 640, fh = Number(root.dataset.height) || 360;
    const timelineBox = $('#timeline').parentElement;
    let span = Number(root.dataset.window) || 300;
    let source = null, ended = false, retry = null, reopened = null;
    const REOPEN_POLL_MS = 3000;

    frameChart($('#timeline'));

    function facts(s, serverTime) {
      text($('#f-device'), s.device);
      text($('#f-mode'), s.mode);
      text($('#f-status'), s.status);
      text($('#f-frames'), s.frames);
      text($('#f-faces'), s.faces);
      text($('#f-batches'), s.batches);
      text($('#f-duplicates'), s.duplicates);
      text($('#f-backlog'), s.backlog_batches === null ? '–' : s.backlog_batches);
      text($('#f-lag'), lag(s.ingest_lag_s));
      text($('#f-analysis'), s.analysis_id === null ? '–' : '#' + s.analysis_id);
      const ago = s.last_batch_at && s.status === 'live' ? serverTime - Date.parse(s.last_batch_at) / 1000 : null;
      setTime($('#f-last time'), s.last_batch_at, ago === null ? '' : ` (${seconds(Math.max(0, ago))} ago)`);
      const badge = $('#session-status .badge');
      badge.className = 'badge s-' + s.status;
      text(badge, s.status);
    }

    function facesNow(now) {
      const faces = now.faces || [];
      text($('#faces-count'), faces.length);
      const g = $('#frame-faces');
      const size = Math.max(12, fh / 22);
      const crowd = faces.length > 3;  // then the boxes are numbered and the list names them
      const marks = faces.map((f, i) => {
        const [x, y, w, h] = f.box;
        const mark = svg('g', {class: `face e-${f.dominant}`});
        const label = crowd ? String(i + 1) : `${f.person}: ${f.dominant}`;
        const title = svg('title');
        title.textContent = `${f.person}: ${f.dominant}`;
        const ty = y > size * 1.4 ? y - size * 0.4 : y + h + size;
        const tag = svg('text', {x: Math.max(0, x), y: Math.min(fh - 2, ty), 'font-size': size.toFixed(0),
                                 'stroke-width': (size / 5).toFixed(1)});
        tag.textContent = label;
        mark.append(title, svg('rect', {x, y, width: w, height: h, rx: 4}), tag);
        return mark;
      });
      g.replaceChildren(...marks);
      text($('#frame-title'), `The camera's frame (${fw}×${fh}): ` + (faces.length
        ? faces.length + ' face(s), ' + faces.map(f => `${f.person} (${f.dominant})`).join(', ')
        : 'no face in the latest frame'));
      $('#face-list').replaceChildren(...faces.map((f, i) => {
        const li = document.createElement('li');
        li.className = 'e-' + f.dominant;
        const dot = document.createElement('span');
        dot.className = 'swatch';
        dot.setAttribute('aria-hidden', 'true');
        const score = Math.round(f.emotions[f.dominant]);
        li.append(dot, `${crowd ? i + 1 + ' · ' : ''}${f.person}: ${f.dominant} ${score}`);
        return li;
      }));
      text($('#now-time'), now.time_s === null || now.time_s === undefined ? '' :
        `Latest frame: ${clock(now.time_s)} into the session` +
        (now.captured_at ? `, captured ${when(new Date(now.captured_at * 1000).toISOString())}.` : '.'));
    }

    function people(all, range) {
      const names = Object.keys(all || {}).sort();
      $('#people-card').hidden = names.length === 0;
      const box = $('#people');
      const have = new Map($$('.person', box).map(el => [el.dataset.person, el]));
      for (const name of names) {
        let el = have.get(name);
        if (el) {
          have.delete(name);
        } else {
          el = document.createElement('div');
          el.className = 'person';
          el.dataset.person = name;
          const h = document.createElement('h3');
          h.textContent = name;
          const chart = svg('svg', {class: 'chart small', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none',
                                    role: 'img', 'aria-label': `${name}: emotion scores (0–100) per second`,
                                    'data-points': '0'});
          el.append(h, chart);
          box.append(el);
          frameChart(chart);
        }
        drawChart(el, all[name], emotions, range);
        $('svg', el).setAttribute('aria-label', `${name}: ` + describe(all[name], emotions));
      }
      for (const el of have.values()) el.remove();
    }

    function closed(s) {
      ended = true;
      if (source) { source.close(); source = null; }
      root.dataset.status = s.status;
      $('#closed-note').hidden = false;
      text($('#closed-text'), `This session closed ${when(s.closed_at)}: its analysis is complete. `);
      let link = $('#report-link');
      if (s.analysis_id !== null) {
        if (!link) {
          link = document.createElement('a');
          link.id = 'report-link';
          link.textContent = 'Open the report';
          $('#closed-note').append(link);
        }
        link.href = `/api/analyses/${s.analysis_id}/report.html`;
      }
      $('#stream-note').hidden = true;
      clearTimeout(reopened);
      reopened = setTimeout(watchReopen, REOPEN_POLL_MS);
    }

    /* A closed session can be reopened by a late batch (a new analysis, its next part): look every
       few seconds, cheaply, and follow it again without a reload. */
    async function watchReopen() {
      const r = await lookUp();
      if (r === undefined) return;
      if (r && r.ok && (await r.json()).session.status === 'live') return connect();
      if (ended) reopened = setTimeout(watchReopen, REOPEN_POLL_MS);
    }

    /* The session as the API has it now: null when offline, undefined after a 401 (gone to log in). */
    async function lookUp() {
      try {
        const r = await fetch(`/api/live/sessions/${id}`, {headers: HEADERS, credentials: 'same-origin',
                                                           cache: 'no-store'});
        offline(false);
        if (r.status !== 401) return r;
        loginNeeded();
        return undefined;
      } catch (e) {
        offline(true);
        return null;
      }
    }

    function render(st) {
      const s = st.session;
      facts(s, st.server_time);
      const dom = $('#dominant');
      text(dom, st.dominant || '–');
      dom.className = 'dominant' + (st.dominant ? ' e-' + st.dominant : '');
      facesNow(st.now || {faces: []});
      const end = st.timeline.length ? st.timeline[st.timeline.length - 1].t : 0;
      const range = xRange(st.timeline, end, span);
      drawChart(timelineBox, st.timeline, emotions, range);
      text($('#timeline-desc'), describe(st.timeline, emotions));
      people(st.people, range);
      if (s.status !== 'live') closed(s);
      else if (root.dataset.status !== 'live') {  // a late batch reopened it
        root.dataset.status = 'live';
        $('#closed-note').hidden = true;
      }
    }

    /* The stream was refused (not a dropped connection, which EventSource retries by itself): why? */
    async function refused() {
      const r = await lookUp();
      if (r === undefined) return;
      if (r && r.status === 404) {
        const note = $('#stream-note');
        note.textContent = 'This session no longer exists.';
        note.hidden = false;
        return;
      }
      retry = setTimeout(connect, 3000);
    }

    function connect() {
      clearTimeout(retry);
      clearTimeout(reopened);
      if (source) source.close();
      ended = false;
      const es = new EventSource(`/api/live/sessions/${id}/events?window=${span}`);
      source = es;
      es.addEventListener('state', e => {
        offline(false);
        render(JSON.parse(e.data));
      });
      es.addEventListener('error', () => {
        if (ended || es !== source) return;
        if (es.readyState === EventSource.CLOSED) {
          source = null;
          refused();
        } else {
          offline(true);  // the browser reconnects by itself
        }
      });
    }

    $('#window').addEventListener('change', e => {
      span = Number(e.target.value) || 300;
      root.dataset.window = span;
      history.replaceState(null, '', `${location.pathname}?window=${span}`);
      connect();
    });
    for (const t of $$('time[datetime]')) if (t.dateTime) t.textContent = when(t.dateTime);
    connect();
  }

  const page = document.body.dataset.page;
  if (page === 'live') listPage();
  else if (page === 'live-session') sessionPage();
})();
