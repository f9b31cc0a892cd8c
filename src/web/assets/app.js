// The live page: the streams' state from /api/streams, every published event from /events
// (server-sent events), one timeline per stream. Nothing is loaded from anywhere else, and
// untrusted strings (stream ids, speakers, text) only ever go into text nodes.
'use strict';
(() => {
  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  const withToken = (u) => (token ? u + (u.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token) : u);
  const SVGNS = 'http://www.w3.org/2000/svg';
  const LABELS = ['anger', 'disgust', 'fear', 'joy', 'neutral', 'sadness', 'surprise'];
  const PX_PER_S = 8;
  const ROW = 26;
  const LEFT = 96;
  const AXIS = 20;
  const MAX_LINES = 200;
  const calls = new Map();
  const states = new Map();
  let received = 0;

  function el(tag, attrs, text) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  }
  function sv(tag, attrs, text) {
    const n = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  }
  const labelClass = (l) => 'l-' + (LABELS.includes(l) ? l : 'other');
  const mmss = (s) => {
    const t = Math.max(0, Math.floor(s));
    return Math.floor(t / 60) + ':' + String(t % 60).padStart(2, '0');
  };
  const clock = (rfc) => {
    const i = String(rfc || '').indexOf('T');
    return i < 0 ? String(rfc || '') : rfc.slice(i + 1).replace(/Z$/, '');
  };
  const bar = (p, width) => {
    const eighths = Math.round(Math.min(1, Math.max(0, p)) * width * 8);
    return '█'.repeat(Math.floor(eighths / 8)) + (eighths % 8 ? ' ▏▎▍▌▋▊▉'[eighths % 8] : '');
  };
  const pad = (s, n) => String(s).padEnd(n);
  // A number as text, whatever arrives (a field a newer daemon dropped, a null).
  const fx = (v, d) => (Number.isFinite(v) ? v.toFixed(d) : '-');
  const runnersUp = (e) =>
    Object.entries(e.probs || {})
      .filter(([k]) => k !== e.label)
      .sort((a, b) => b[1] - a[1]);

  // One line as `summerd tail` prints it.
  function emotionLine(e) {
    const rest = runnersUp(e).slice(0, 2).map(([k, p]) => `${k} ${bar(p, 4)} ${fx(p, 2)}`);
    const m = e.modalities || {};
    const flags = `[${m.text ? 'T' : '-'} ${m.audio ? 'A' : '-'} ${m.visual ? 'V' : '-'}]`;
    let line = `${clock(e.emitted_at)} ${pad(e.speaker, 10)} ${pad(e.label, 8)} ${fx(e.confidence, 2)} ` +
      `${pad(bar(e.confidence, 20), 20)} ${rest.join('  ')}  ${flags} ${fx(e.latency_ms, 1)} ms`;
    if (e.provisional) line += ' (provisional)';
    if (e.face) line += e.face.label ? `  face ${e.face.label} ${fx(e.face.confidence, 2)}` : '  face -';
    if (typeof e.text === 'string') line += `  "${e.text}"`;
    return line;
  }
  function lifecycleLine(e) {
    let line = `${clock(e.emitted_at)} ${e.stream || 'daemon'} ${e.type}`;
    if (e.reason) line += `: ${e.reason}`;
    if (typeof e.media_time === 'number') line += ` (media ${fx(e.media_time, 1)} s)`;
    return line;
  }
  function signalLine(e) {
    return `${clock(e.emitted_at)} ${e.speaker} ${e.type.toUpperCase()} ${e.label} ` +
      `level ${fx(e.level, 2)} (peak ${fx(e.peak, 2)}) ${mmss(e.start)}-${mmss(e.end)}` +
      (e.reason ? `: ${e.reason}` : '');
  }
  function addLine(list, cls, text, attrs) {
    const li = el('li', Object.assign({ class: cls }, attrs || {}), text);
    list.appendChild(li);
    while (list.childElementCount > MAX_LINES) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  class Call {
    constructor(id) {
      this.id = id;
      this.utts = new Map();
      this.life = [];
      this.episodes = [];
      this.speakers = [];
      this.dirty = false;
      this.node = el('article', { class: 'call', 'data-stream': id });
      const h = el('h3');
      h.appendChild(el('span', {}, id));
      this.meta = el('small');
      h.appendChild(this.meta);
      this.node.appendChild(h);
      this.scroll = el('div', { class: 'scroll' });
      this.svg = sv('svg', { class: 'timeline', role: 'img', 'aria-label': `timeline of ${id}` });
      this.scroll.appendChild(this.svg);
      this.node.appendChild(this.scroll);
      this.lines = el('ol', { class: 'lines' });
      this.node.appendChild(this.lines);
      const all = document.getElementById('calls');
      const after = [...all.children].find((c) => c.dataset.stream > id);
      all.insertBefore(this.node, after || null);
    }
    speaker(s) {
      if (!this.speakers.includes(s)) this.speakers.push(s);
    }
    emotion(e) {
      const old = this.utts.get(e.seq);
      if (old && !old.provisional && e.provisional) return;
      this.utts.set(e.seq, e);
      this.speaker(e.speaker);
      addLine(this.lines, 'emotion', emotionLine(e), { 'data-seq': e.seq });
      this.touch();
    }
    lifecycle(e) {
      this.life.push(e);
      addLine(this.lines, 'life', lifecycleLine(e), { 'data-kind': e.type });
      this.touch();
    }
    signal(e) {
      this.speaker(e.speaker);
      if (e.type === 'escalation') {
        this.episodes.push({ speaker: e.speaker, start: e.start, end: null, label: e.label, since: e });
      } else {
        const open = this.episodes.find((p) => p.speaker === e.speaker && p.end === null);
        if (open) open.end = e.end;
        else this.episodes.push({ speaker: e.speaker, start: e.start, end: e.end, label: e.label, since: e });
      }
      addLine(this.lines, 'signal', signalLine(e), { 'data-kind': e.type });
      this.touch();
      scheduleTable();
    }
    openEpisodes() {
      return this.episodes.filter((p) => p.end === null);
    }
    extent() {
      let end = 0;
      for (const u of this.utts.values()) end = Math.max(end, u.end);
      for (const l of this.life) if (typeof l.media_time === 'number') end = Math.max(end, l.media_time);
      const st = states.get(this.id);
      if (st) end = Math.max(end, st.media_time || 0);
      return end;
    }
    touch() {
      if (this.dirty) return;
      this.dirty = true;
      requestAnimationFrame(() => {
        this.dirty = false;
        this.render();
      });
    }
    render() {
      const end = this.extent();
      // A short call fills the width; a long one gets PX_PER_S and scrolls.
      const span = Math.max(end, 10);
      const plotW = Math.max(this.scroll.clientWidth - LEFT - 24, Math.ceil(span * PX_PER_S), 240);
      const x = (t) => LEFT + (t / span) * plotW;
      const rows = Math.max(1, this.speakers.length);
      const h = AXIS + rows * ROW + 6;
      const w = LEFT + plotW + 16;
      const atEnd = this.scroll.scrollLeft + this.scroll.clientWidth >= this.scroll.scrollWidth - 4;
      const g = document.createDocumentFragment();
      const axis = sv('g', { class: 'axis' });
      const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600].find((s) => (s / span) * plotW >= 70) || 1200;
      for (let t = 0; t <= span; t += step) {
        axis.appendChild(sv('line', { x1: x(t), x2: x(t), y1: AXIS - 4, y2: h }));
        axis.appendChild(sv('text', { x: x(t) + 2, y: AXIS - 7 }, mmss(t)));
      }
      g.appendChild(axis);
      const rowY = (s) => AXIS + this.speakers.indexOf(s) * ROW;
      this.speakers.forEach((s) => {
        g.appendChild(sv('rect', { class: 'row-bg', x: LEFT, y: rowY(s) + 2, width: plotW, height: ROW - 4 }));
        g.appendChild(sv('text', { x: 4, y: rowY(s) + ROW / 2 + 4 }, s));
      });
      for (const p of this.episodes) {
        const x0 = x(p.start);
        const x1 = x(p.end === null ? end : p.end);
        const r = sv('rect', {
          class: 'episode', 'data-speaker': p.speaker, x: x0, y: rowY(p.speaker),
          width: Math.max(2, x1 - x0), height: ROW,
        });
        r.appendChild(sv('title', {}, `${p.speaker}: escalation (${p.label}) ${mmss(p.start)}-${p.end === null ? 'now' : mmss(p.end)}`));
        g.appendChild(r);
      }
      for (const u of this.utts.values()) {
        const [ru, rp] = runnersUp(u)[0] || ['-', 0];
        const r = sv('rect', {
          class: `utt ${labelClass(u.label)}${u.provisional ? ' provisional' : ''}`,
          'data-stream': this.id, 'data-seq': u.seq, 'data-label': u.label, 'data-speaker': u.speaker,
          'data-confidence': fx(u.confidence, 2),
          x: x(u.start), y: rowY(u.speaker) + 4, width: Math.max(2, x(u.end) - x(u.start)), height: ROW - 8,
          'fill-opacity': fx(0.25 + 0.75 * (Number.isFinite(u.confidence) ? u.confidence : 0), 2),
        });
        let tip = `${u.speaker} #${u.seq}: ${u.label} ${fx(u.confidence, 2)}, runner-up ${ru} ${fx(rp, 2)}`;
        if (typeof u.text === 'string') tip += `\n"${u.text}"`;
        r.appendChild(sv('title', {}, tip));
        g.appendChild(r);
      }
      // Each speaker's smoothed negative share (where events carry it), as the report draws it.
      for (const sp of this.speakers) {
        const pts = [...this.utts.values()]
          .filter((u) => u.speaker === sp && u.smoothed && Number.isFinite(u.smoothed.negative))
          .sort((a, b) => a.end - b.end)
          .map((u) => `${fx(x(u.end), 1)},${fx(rowY(sp) + ROW - 3 - u.smoothed.negative * (ROW - 6), 1)}`);
        if (pts.length > 1) g.appendChild(sv('polyline', { class: 'negline', 'data-speaker': sp, points: pts.join(' ') }));
      }
      for (const l of this.life) {
        if (typeof l.media_time !== 'number') continue;
        const m = sv('g', { class: 'life', 'data-stream': this.id, 'data-kind': l.type });
        m.appendChild(sv('line', { x1: x(l.media_time), x2: x(l.media_time), y1: AXIS - 2, y2: h }));
        const lx = x(l.media_time);
        const nearEnd = lx > w - 48;
        m.appendChild(sv('text', { x: nearEnd ? lx - 2 : lx + 2, y: h - 2, 'text-anchor': nearEnd ? 'end' : 'start' },
          l.type.replace('stream.', '')));
        m.appendChild(sv('title', {}, lifecycleLine(l)));
        g.appendChild(m);
      }
      this.svg.replaceChildren(g);
      this.svg.setAttribute('width', w);
      this.svg.setAttribute('height', h);
      this.svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
      if (atEnd) this.scroll.scrollLeft = this.scroll.scrollWidth;
      const st = states.get(this.id);
      this.meta.textContent = `${this.utts.size} utterance(s)` + (st ? ` · ${st.state} · media ${mmss(st.media_time)}` : '');
      this.node.classList.toggle('escalated', this.openEpisodes().length > 0);
    }
  }

  function call(id) {
    let c = calls.get(id);
    if (!c) {
      c = new Call(id);
      calls.set(id, c);
    }
    return c;
  }

  function renderAttention() {
    const list = document.getElementById('escalated');
    const items = [];
    for (const c of [...calls.values()].sort((a, b) => (a.id < b.id ? -1 : 1))) {
      for (const p of c.openEpisodes()) items.push([c.id, p]);
    }
    list.replaceChildren(...items.map(([id, p]) =>
      el('li', { 'data-stream': id, 'data-speaker': p.speaker },
        `${id} · ${p.speaker} · ${p.label} since ${mmss(p.start)} (level ${fx(p.since.level, 2)})`)));
    document.getElementById('attention').hidden = items.length === 0;
    renderTable();
  }

  // A daemon that restarted numbers its events afresh: start the page over.
  function reset() {
    for (const c of calls.values()) c.node.remove();
    calls.clear();
    states.clear();
    received = 0;
    document.getElementById('daemon-events').replaceChildren();
    scheduleTable();
  }

  // The table and the attention box are redrawn at most once a frame, however many events
  // arrive (a page opened mid-call gets the kept ones in one burst).
  let tableQueued = false;
  function scheduleTable() {
    if (tableQueued) return;
    tableQueued = true;
    requestAnimationFrame(() => {
      tableQueued = false;
      renderAttention();
    });
  }

  function renderTable() {
    const body = document.querySelector('#streams tbody');
    const ids = new Set([...states.keys(), ...calls.keys()]);
    const rows = [...ids].sort().map((id) => {
      const st = states.get(id) || { state: 'detached', media_time: 0, restarts: 0, faces: null };
      const c = calls.get(id);
      const tr = el('tr', { 'data-stream': id });
      tr.appendChild(el('td', {}, id));
      const s = el('td');
      s.appendChild(el('span', { class: 'state', 'data-state': st.state }, st.state));
      tr.appendChild(s);
      tr.appendChild(el('td', { class: 'num' }, mmss(st.media_time)));
      tr.appendChild(el('td', { class: 'num' }, String(st.restarts)));
      tr.appendChild(el('td', {}, st.faces === null || st.faces === undefined ? '-' : st.faces ? 'yes' : 'no'));
      tr.appendChild(el('td', { class: 'num' }, String(c ? c.utts.size : 0)));
      tr.appendChild(el('td', {}, c ? c.openEpisodes().map((p) => p.speaker).join(', ') : ''));
      return tr;
    });
    body.replaceChildren(...rows);
    document.getElementById('totals').textContent = `${ids.size} stream(s) · ${received} event(s)`;
  }

  async function pollStreams() {
    try {
      const r = await fetch(withToken('/api/streams'), { cache: 'no-store' });
      if (r.ok) {
        const list = await r.json();
        const seen = new Set();
        for (const s of list) {
          states.set(s.id, s);
          seen.add(s.id);
        }
        for (const [id, s] of states) if (!seen.has(id)) s.state = 'detached';
        scheduleTable();
        for (const c of calls.values()) c.touch();
      }
    } catch (err) {
      // The daemon is restarting or gone; the connection badge says so.
    }
    setTimeout(pollStreams, 2000);
  }

  function handle(kind, data) {
    let e;
    try {
      e = JSON.parse(data);
    } catch (err) {
      console.warn('summerd: an event that is not JSON was skipped');
      return;
    }
    received += 1;
    document.body.dataset.events = String(received);
    if (kind === 'emotion') call(e.stream).emotion(e);
    else if (kind === 'signal') call(e.stream).signal(e);
    else if (e.stream) call(e.stream).lifecycle(e);
    else addLine(document.getElementById('daemon-events'), 'life', lifecycleLine(e), { 'data-kind': e.type });
    scheduleTable();
  }

  let retry = 1000;
  let lastId = '';
  function connect() {
    const conn = document.getElementById('conn');
    // A new connection resumes after the last event seen (the browser's own reconnects send
    // it as Last-Event-ID).
    const es = new EventSource(withToken(lastId ? '/events?after=' + encodeURIComponent(lastId) : '/events'));
    es.onopen = () => {
      retry = 1000;
      conn.dataset.state = 'live';
      conn.textContent = 'live';
    };
    es.onerror = () => {
      conn.dataset.state = 'lost';
      conn.textContent = 'reconnecting';
      // The browser retries by itself after a dropped connection, not after a refusal (a
      // full listener's 503): then start again, backing off.
      if (es.readyState === EventSource.CLOSED) {
        es.close();
        setTimeout(connect, retry);
        retry = Math.min(retry * 2, 30000);
      }
    };
    es.addEventListener('reset', reset);
    for (const kind of ['emotion', 'lifecycle', 'signal']) {
      es.addEventListener(kind, (ev) => {
        lastId = ev.lastEventId;
        handle(kind, ev.data);
      });
    }
    es.addEventListener('lagged', (ev) => {
      addLine(document.getElementById('daemon-events'), 'life', `this page missed ${ev.data} event(s): it fell behind`);
    });
  }

  const legend = document.getElementById('legend');
  for (const l of LABELS) {
    const s = el('span');
    s.appendChild(el('i', { class: labelClass(l) }));
    s.appendChild(document.createTextNode(l));
    legend.appendChild(s);
  }
  connect();
  pollStreams();
})();
