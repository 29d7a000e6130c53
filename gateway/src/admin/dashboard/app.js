// Gateway live dashboard (SPEC §8): polls /status (JSON) and /metrics (Prometheus text) once a
// second, keeps the last 5 minutes as a ring buffer of 300 samples and draws everything by hand
// (inline SVG): no build step, no external resources.
//
// Defensive by design: every field of /status may be missing or differently cased, /metrics may
// hold any subset of the gateway's series, and either may fail; the page then shows "—" and
// keeps polling. Stable DOM hooks for tests are the data-testid attributes documented in
// docs/dashboard.md.
(function () {
  'use strict';

  const POLL_MS = 1000;
  const WINDOW_SAMPLES = 300;
  const WINDOW_MS = WINDOW_SAMPLES * POLL_MS;
  const FETCH_TIMEOUT_MS = 2500;
  const SEP = '\u001f';

  const CLASSES = ['2xx', '3xx', '4xx', '429', '5xx'];
  const CLASS_COLORS = {
    '2xx': '#3fb950',
    '3xx': '#58a6ff',
    '4xx': '#d29922',
    '429': '#bc8cff',
    '5xx': '#f85149',
  };
  const PALETTE = ['#58a6ff', '#f0883e', '#3fb950', '#bc8cff', '#ff7b72', '#39c5cf', '#d29922', '#8b949e'];
  const BREAKER_STATES = ['closed', 'open', 'half_open'];

  // ---------------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------------

  /** @type {{t: number, ok: boolean, rates: Object<string, number>, gauges: Object<string, number>}[]} */
  const samples = [];
  let prevCounters = null; // { t, values: Map<key, number> } of the previous successful /metrics
  let lastMetrics = null; // latest parsed metrics (array of {name, labels, value})
  let lastStatus = null; // latest /status JSON
  let statusFetchedAt = 0; // performance.now() when lastStatus arrived
  let lastOkAt = 0; // Date.now() of the last poll where both sources answered
  let rateLimitedSession = null; // limiter rejections counted since page load
  let prevRateLimitedSum = null;
  const colorOf = new Map(); // series name → colour, stable for the page's life
  const hover = new WeakMap(); // chart element → { x } while the mouse is over it
  const chartData = new WeakMap(); // chart element → last drawn spec (for the hover tooltip)

  function color(name) {
    if (!colorOf.has(name)) colorOf.set(name, PALETTE[colorOf.size % PALETTE.length]);
    return colorOf.get(name);
  }

  // ---------------------------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------------------------

  const $ = (sel) => document.querySelector(sel);
  const byTestId = (id) => document.querySelector('[data-testid="' + id + '"]');

  function esc(v) {
    return String(v).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  }

  function isObj(v) {
    return v !== null && typeof v === 'object' && !Array.isArray(v);
  }

  /** First present field among `names` (camelCase and snake_case spellings). */
  function pick(o, ...names) {
    if (!isObj(o)) return undefined;
    for (const n of names) {
      if (o[n] !== undefined && o[n] !== null) return o[n];
    }
    return undefined;
  }

  function num(v) {
    if (typeof v === 'number' && Number.isFinite(v)) return v;
    if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) return Number(v);
    return undefined;
  }

  /** Entries of a map-or-array: [[name, value]], names taken from `nameKeys` for arrays. */
  function entries(v, ...nameKeys) {
    if (Array.isArray(v)) {
      return v.map((item, i) => {
        const n = pick(item, ...nameKeys);
        return [n === undefined ? String(i) : String(n), item];
      });
    }
    if (isObj(v)) return Object.keys(v).sort().map((k) => [k, v[k]]);
    return [];
  }

  function fmtRate(v) {
    if (v === undefined || v === null || !Number.isFinite(v)) return '—';
    if (v === 0) return '0';
    if (Math.abs(v) < 10) return v.toFixed(1);
    return Math.round(v).toLocaleString('en-US');
  }

  function fmtCount(v) {
    if (v === undefined || v === null || !Number.isFinite(v)) return '—';
    return Math.round(v).toLocaleString('en-US');
  }

  function fmtSeconds(ms) {
    if (!Number.isFinite(ms)) return '—';
    const s = Math.max(0, ms) / 1000;
    if (s < 60) return s.toFixed(1) + ' s';
    const m = Math.floor(s / 60);
    return m + ' m ' + Math.floor(s - m * 60) + ' s';
  }

  /** A time from /status: ISO string, or epoch seconds/milliseconds. */
  function parseTime(v) {
    if (typeof v === 'string') {
      const t = Date.parse(v);
      if (Number.isFinite(t)) return t;
      const n = num(v);
      if (n !== undefined) v = n;
      else return undefined;
    }
    if (typeof v === 'number' && Number.isFinite(v)) return v < 1e11 ? v * 1000 : v;
    return undefined;
  }

  function fmtAgo(ms) {
    if (!Number.isFinite(ms)) return '—';
    if (ms < 1500) return 'just now';
    return fmtSeconds(ms).replace(/\.\d s$/, ' s') + ' ago';
  }

  function fmtWhen(v) {
    const t = parseTime(v);
    if (t === undefined) return v === undefined || v === null ? '—' : esc(String(v));
    const d = new Date(t);
    return esc(d.toLocaleString('en-GB', { hour12: false })) + ' <span class="muted">(' + esc(fmtAgo(Date.now() - t)) + ')</span>';
  }

  // ---------------------------------------------------------------------------------------------
  // Prometheus text parser (tolerant: bad lines are skipped)
  // ---------------------------------------------------------------------------------------------

  function parseValue(s) {
    if (s === undefined) return null;
    if (s === 'NaN') return NaN;
    if (s === '+Inf' || s === 'Inf') return Infinity;
    if (s === '-Inf') return -Infinity;
    const v = Number(s);
    return Number.isNaN(v) ? null : v;
  }

  function parseLine(line) {
    let i = 0;
    while (i < line.length && /[A-Za-z0-9_:]/.test(line[i])) i++;
    const name = line.slice(0, i);
    if (!name) return null;
    const labels = {};
    if (line[i] === '{') {
      i++;
      for (;;) {
        while (i < line.length && (line[i] === ' ' || line[i] === ',')) i++;
        if (i >= line.length) return null;
        if (line[i] === '}') {
          i++;
          break;
        }
        const eq = line.indexOf('=', i);
        if (eq < 0) return null;
        const key = line.slice(i, eq).trim();
        i = eq + 1;
        if (line[i] !== '"') return null;
        i++;
        let val = '';
        while (i < line.length && line[i] !== '"') {
          if (line[i] === '\\' && i + 1 < line.length) {
            const c = line[i + 1];
            val += c === 'n' ? '\n' : c;
            i += 2;
          } else {
            val += line[i];
            i++;
          }
        }
        if (i >= line.length) return null;
        i++; // closing quote
        labels[key] = val;
      }
    }
    const value = parseValue(line.slice(i).trim().split(/\s+/)[0]);
    if (value === null) return null;
    return { name, labels, value };
  }

  function parseMetrics(text) {
    const out = [];
    for (const raw of String(text).split('\n')) {
      const line = raw.trim();
      if (!line || line[0] === '#') continue;
      const m = parseLine(line);
      if (m) out.push(m);
    }
    return out;
  }

  function statusClass(status) {
    const s = String(status);
    if (s === '429') return '429';
    if (/^[1-5]xx$/i.test(s)) return s.toLowerCase();
    const d = s[0];
    if (d === '2') return '2xx';
    if (d === '3') return '3xx';
    if (d === '4') return '4xx';
    if (d === '5') return '5xx';
    return null; // 1xx and unknown are not charted
  }

  /** Aggregated counters and gauges of one /metrics scrape, keyed by series. */
  function aggregate(metrics) {
    const counters = new Map();
    const gauges = new Map();
    const add = (map, key, v) => {
      if (Number.isFinite(v)) map.set(key, (map.get(key) || 0) + v);
    };
    for (const m of metrics) {
      const l = m.labels;
      switch (m.name) {
        case 'gateway_requests_total': {
          const cls = statusClass(l.status);
          if (cls) add(counters, ['req', l.route || '(none)', cls].join(SEP), m.value);
          break;
        }
        case 'gateway_ratelimit_rejected_total':
          add(counters, ['rl_rej', l.zone || '?'].join(SEP), m.value);
          break;
        case 'gateway_ratelimit_delayed_total':
          add(counters, ['rl_del', l.zone || '?'].join(SEP), m.value);
          break;
        case 'gateway_limit_conn_rejected_total':
          add(counters, ['lc_rej', l.zone || '?'].join(SEP), m.value);
          break;
        case 'gateway_bulkhead_rejected_total':
          add(counters, ['bh_rej', l.upstream || '?'].join(SEP), m.value);
          break;
        case 'gateway_upstream_inflight':
          add(gauges, ['inflight', l.upstream || '?'].join(SEP), m.value);
          break;
        default:
          break;
      }
    }
    return { counters, gauges };
  }

  function sumMetric(metrics, name, filter) {
    let total;
    for (const m of metrics || []) {
      if (m.name === name && Number.isFinite(m.value) && (!filter || filter(m.labels))) total = (total || 0) + m.value;
    }
    return total;
  }

  // ---------------------------------------------------------------------------------------------
  // Sampling
  // ---------------------------------------------------------------------------------------------

  function pushSample(sample) {
    samples.push(sample);
    while (samples.length > WINDOW_SAMPLES) samples.shift();
    const cutoff = sample.t - WINDOW_MS;
    while (samples.length && samples[0].t < cutoff) samples.shift();
  }

  /** Turns a scrape into a sample: counter deltas per second (a counter that went down was reset). */
  function sampleFromMetrics(metrics, t) {
    const { counters, gauges } = aggregate(metrics);
    const rates = {};
    const hasRates = Boolean(prevCounters && t > prevCounters.t);
    if (hasRates) {
      const dt = (t - prevCounters.t) / 1000;
      for (const [key, v] of counters) {
        const before = prevCounters.values.get(key);
        const delta = before === undefined ? 0 : v >= before ? v - before : v;
        rates[key] = delta / dt;
      }
    }
    prevCounters = { t, values: counters };
    const g = {};
    for (const [key, v] of gauges) g[key] = v;
    return { t, ok: true, hasRates, rates, gauges: g };
  }

  function trackRateLimited(metrics) {
    const sum = sumMetric(metrics, 'gateway_ratelimit_rejected_total');
    if (sum === undefined) return;
    if (prevRateLimitedSum === null) {
      rateLimitedSession = 0;
    } else {
      rateLimitedSession += sum >= prevRateLimitedSum ? sum - prevRateLimitedSum : sum;
    }
    prevRateLimitedSum = sum;
  }

  async function fetchWithTimeout(url, kind) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    try {
      const res = await fetch(url, { cache: 'no-store', signal: ctrl.signal });
      if (!res.ok) throw new Error(url + ': HTTP ' + res.status);
      return kind === 'json' ? await res.json() : await res.text();
    } finally {
      clearTimeout(timer);
    }
  }

  /** Resolves to {ok, value} or {ok: false, error}: a failed fetch never throws out of a poll. */
  function settle(promise) {
    return promise.then(
      (value) => ({ ok: true, value }),
      (error) => ({ ok: false, error: error && error.name === 'AbortError' ? 'timed out' : String((error && error.message) || error) }),
    );
  }

  async function poll() {
    const t = Date.now();
    const [st, mt] = await Promise.all([settle(fetchWithTimeout('status', 'json')), settle(fetchWithTimeout('metrics', 'text'))]);
    if (st.ok) {
      lastStatus = isObj(st.value) ? st.value : {};
      statusFetchedAt = performance.now();
    }
    if (mt.ok) {
      lastMetrics = parseMetrics(mt.value);
      trackRateLimited(lastMetrics);
      pushSample(sampleFromMetrics(lastMetrics, t));
    } else {
      pushSample({ t, ok: false, rates: {}, gauges: {} });
    }
    if (st.ok && mt.ok) lastOkAt = t;
    renderConnection(st, mt);
    renderAll();
  }

  function schedule() {
    setTimeout(async () => {
      try {
        await poll();
      } finally {
        schedule();
      }
    }, POLL_MS);
  }

  // ---------------------------------------------------------------------------------------------
  // Charts (inline SVG)
  // ---------------------------------------------------------------------------------------------

  function niceStep(x) {
    const exp = Math.pow(10, Math.floor(Math.log10(x)));
    const f = x / exp;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * exp;
  }

  function fmtTick(v) {
    if (v === 0) return '0';
    if (Math.abs(v) >= 1000) return (v / 1000).toFixed(Math.abs(v) >= 10000 ? 0 : 1) + 'k';
    if (Number.isInteger(v)) return String(v);
    return v.toFixed(v < 0.1 ? 2 : 1);
  }

  /**
   * Draws `spec` into `el`: { series: [{ label, color, dash, values }], stacked, height }.
   * `values` are aligned with `samples` (number or undefined for a gap).
   */
  function drawChart(el, spec) {
    chartData.set(el, spec);
    const W = Math.max(240, Math.floor(el.clientWidth || 600));
    const H = spec.height || 170;
    const padL = 40, padR = 10, padT = 8, padB = 20;
    const plotW = W - padL - padR, plotH = H - padT - padB;
    const end = samples.length ? samples[samples.length - 1].t : Date.now();
    // The time axis grows with the data, one minute at a time, up to the 5-minute window.
    const span = samples.length ? end - samples[0].t : 0;
    const windowMs = Math.min(WINDOW_MS, Math.max(60000, Math.ceil(span / 60000) * 60000));
    const start = end - windowMs;
    const xOf = (t) => padL + ((t - start) / windowMs) * plotW;

    // Stack if asked; remember each point's lower and upper edge.
    const n = samples.length;
    const layers = spec.series.map(() => ({ lo: new Array(n), hi: new Array(n) }));
    let max = 0;
    for (let i = 0; i < n; i++) {
      let cum = 0;
      const anyValue = spec.series.some((s) => Number.isFinite(s.values[i]));
      spec.series.forEach((s, k) => {
        const v = s.values[i];
        if (spec.stacked) {
          if (!anyValue) return;
          const val = Number.isFinite(v) ? v : 0;
          layers[k].lo[i] = cum;
          cum += val;
          layers[k].hi[i] = cum;
        } else if (Number.isFinite(v)) {
          layers[k].hi[i] = v;
          if (v > max) max = v;
        }
      });
      if (cum > max) max = cum;
    }
    const step = niceStep(Math.max(max, 1) / 4);
    const yMax = Math.max(step, Math.ceil(Math.max(max, 1) / step) * step);
    const yOf = (v) => padT + plotH - (v / yMax) * plotH;

    const parts = [];
    parts.push('<svg class="chart-svg" width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + ' ' + H + '" role="img">');
    for (let v = 0; v <= yMax + step / 2; v += step) {
      const y = yOf(v).toFixed(1);
      parts.push('<line class="grid-line" x1="' + padL + '" x2="' + (W - padR) + '" y1="' + y + '" y2="' + y + '"/>');
      parts.push('<text class="axis" x="' + (padL - 6) + '" y="' + y + '" dy="0.32em" text-anchor="end">' + fmtTick(v) + '</text>');
    }
    const narrow = plotW < 520;
    const tickMs = windowMs <= 60000 ? (narrow ? 20000 : 10000) : windowMs <= 120000 ? 30000 : 60000;
    const ticks = Math.round(windowMs / tickMs);
    for (let m = 0; m <= ticks; m++) {
      const x = xOf(end - m * tickMs).toFixed(1);
      parts.push('<line class="grid-line v" x1="' + x + '" x2="' + x + '" y1="' + padT + '" y2="' + (padT + plotH) + '"/>');
      const ago = (m * tickMs) / 1000;
      const label = m === 0 ? 'now' : ago < 60 || ago % 60 ? '−' + ago + (narrow ? 's' : ' s') : '−' + ago / 60 + (narrow ? 'm' : ' min');
      const anchor = m === 0 ? 'end' : m === ticks ? 'start' : 'middle';
      parts.push('<text class="axis" x="' + x + '" y="' + (H - 5) + '" text-anchor="' + anchor + '">' + label + '</text>');
    }
    // Gaps where /metrics could not be read.
    for (let i = 0; i < n; i++) {
      if (!samples[i].ok) {
        const x0 = xOf(samples[i].t - POLL_MS / 2), x1 = xOf(samples[i].t + POLL_MS / 2);
        parts.push('<rect class="gap" x="' + Math.max(padL, x0).toFixed(1) + '" y="' + padT + '" width="' + Math.max(1, x1 - x0).toFixed(1) + '" height="' + plotH + '"/>');
      }
    }
    // Series that stayed at zero are drawn first and faint, so they never hide the ones that moved.
    const order = spec.series.map((s, k) => k);
    const flat = spec.series.map((s, k) => !layers[k].hi.some((v) => v > 0));
    if (!spec.stacked) order.sort((x, y) => Number(flat[y]) - Number(flat[x]));
    order.forEach((k) => {
      const s = spec.series[k];
      const { lo, hi } = layers[k];
      if (spec.stacked) {
        // One polygon per run of consecutive points.
        let run = [];
        const flush = () => {
          if (run.length > 0) {
            const top = run.map((i) => xOf(samples[i].t).toFixed(1) + ',' + yOf(hi[i]).toFixed(1));
            const bottom = run.slice().reverse().map((i) => xOf(samples[i].t).toFixed(1) + ',' + yOf(lo[i]).toFixed(1));
            if (run.length === 1) {
              const x = xOf(samples[run[0]].t);
              top.push((x + 2).toFixed(1) + ',' + yOf(hi[run[0]]).toFixed(1));
              bottom.unshift((x + 2).toFixed(1) + ',' + yOf(lo[run[0]]).toFixed(1));
            }
            parts.push('<polygon class="area" fill="' + s.color + '" points="' + top.concat(bottom).join(' ') + '"/>');
            // The top edge, only where this layer has a thickness (a zero layer would hide the others).
            const thick = (i) => hi[i] - lo[i] > 0;
            let d = '';
            for (let j = 1; j < run.length; j++) {
              const a = run[j - 1], b = run[j];
              if (!thick(a) && !thick(b)) continue;
              d += 'M' + top[j - 1] + 'L' + top[j];
            }
            if (d) parts.push('<path class="line" stroke="' + s.color + '" d="' + d + '"/>');
          }
          run = [];
        };
        for (let i = 0; i < n; i++) {
          if (Number.isFinite(hi[i])) run.push(i);
          else flush();
        }
        flush();
      } else {
        let d = '';
        let pen = false;
        for (let i = 0; i < n; i++) {
          if (!Number.isFinite(hi[i])) {
            pen = false;
            continue;
          }
          d += (pen ? 'L' : 'M') + xOf(samples[i].t).toFixed(1) + ',' + yOf(hi[i]).toFixed(1);
          pen = true;
        }
        if (d) parts.push('<path class="line' + (flat[k] ? ' flat' : '') + '" stroke="' + s.color + '"' + (s.dash ? ' stroke-dasharray="' + s.dash + '"' : '') + ' d="' + d + '"/>');
      }
    });
    parts.push('<line class="cursor" x1="0" x2="0" y1="' + padT + '" y2="' + (padT + plotH) + '" visibility="hidden"/>');
    parts.push('</svg>');

    const legend = spec.series.length
      ? spec.series
          .map((s) => {
            const last = lastValue(s.values);
            return '<span class="legend-item" data-series="' + esc(s.label) + '" data-value="' + (Number.isFinite(last) ? last : '') + '"><i style="background:' + s.color + (s.dash ? ';opacity:.6' : '') + '"></i>' + esc(s.label) + ' <b>' + fmtRate(last) + '</b></span>';
          })
          .join('')
      : '<span class="muted">no data yet</span>';
    el.innerHTML = '<div class="plot">' + parts.join('') + '<div class="tooltip" hidden></div></div><div class="legend">' + legend + '</div>';
    el.dataset.geometry = JSON.stringify({ padL, plotW, start, windowMs, W });
    const h = hover.get(el);
    if (h) showCursor(el, h.x);
  }

  function lastValue(values) {
    for (let i = values.length - 1; i >= 0 && i >= values.length - 3; i--) {
      if (Number.isFinite(values[i])) return values[i];
    }
    return undefined;
  }

  function showCursor(el, x) {
    const spec = chartData.get(el);
    const svg = el.querySelector('svg');
    const tip = el.querySelector('.tooltip');
    if (!spec || !svg || !tip || !samples.length) return;
    let g;
    try {
      g = JSON.parse(el.dataset.geometry || '{}');
    } catch (_) {
      return;
    }
    const t = g.start + ((x - g.padL) / g.plotW) * g.windowMs;
    let best = 0;
    for (let i = 1; i < samples.length; i++) {
      if (Math.abs(samples[i].t - t) < Math.abs(samples[best].t - t)) best = i;
    }
    const sx = g.padL + ((samples[best].t - g.start) / g.windowMs) * g.plotW;
    const cursor = svg.querySelector('.cursor');
    if (cursor) {
      cursor.setAttribute('x1', sx.toFixed(1));
      cursor.setAttribute('x2', sx.toFixed(1));
      cursor.setAttribute('visibility', 'visible');
    }
    const ago = Math.round((samples[samples.length - 1].t - samples[best].t) / 1000);
    const rows = spec.series
      .map((s) => '<div><i style="background:' + s.color + '"></i>' + esc(s.label) + ' <b>' + (s.fmt || fmtRate)(s.values[best]) + '</b></div>')
      .join('');
    tip.innerHTML = '<div class="tip-time">' + (ago === 0 ? 'now' : '−' + ago + ' s') + (samples[best].ok ? '' : ' · no data') + '</div>' + rows;
    tip.hidden = false;
    const left = sx + 12 + 180 > g.W ? sx - 12 - 180 : sx + 12;
    tip.style.left = Math.max(0, left) + 'px';
  }

  function attachHover(el) {
    if (el.dataset.hover) return;
    el.dataset.hover = '1';
    el.addEventListener('mousemove', (ev) => {
      const svg = el.querySelector('svg');
      if (!svg) return;
      const x = ev.clientX - svg.getBoundingClientRect().left;
      hover.set(el, { x });
      showCursor(el, x);
    });
    el.addEventListener('mouseleave', () => {
      hover.delete(el);
      const tip = el.querySelector('.tooltip');
      const cursor = el.querySelector('.cursor');
      if (tip) tip.hidden = true;
      if (cursor) cursor.setAttribute('visibility', 'hidden');
    });
  }

  // A counter absent from a scrape that has rates did not move: its rate is 0, not a gap.
  const rateSeries = (key) => samples.map((s) => (s.ok && s.hasRates ? s.rates[key] || 0 : undefined));
  const gaugeSeries = (key) => samples.map((s) => (s.ok ? s.gauges[key] : undefined));

  /** Names present in the window for counters/gauges whose key starts with `kind`. */
  function namesOf(kind, prop, part) {
    const names = new Set();
    const last = prevCounters ? Array.from(prevCounters.values.keys()) : [];
    const keys = last.concat(...samples.map((s) => Object.keys(s[prop])));
    for (const key of keys) {
      const p = key.split(SEP);
      if (p[0] === kind) names.add(p[part || 1]);
    }
    return Array.from(names).sort();
  }

  function sumSeries(keys) {
    return samples.map((s) => {
      if (!s.ok || !s.hasRates) return undefined;
      let total = 0;
      for (const k of keys) {
        const v = s.rates[k];
        if (Number.isFinite(v)) total += v;
      }
      return total;
    });
  }

  function renderCharts() {
    const routes = namesOf('req', 'rates');
    const allEl = $('[data-chart="requests-all"]');
    drawChart(allEl, {
      stacked: true,
      height: 190,
      series: CLASSES.map((cls) => ({
        label: cls,
        color: CLASS_COLORS[cls],
        values: sumSeries(routes.map((r) => ['req', r, cls].join(SEP))),
      })),
    });
    attachHover(allEl);

    const limiter = [];
    for (const zone of Array.from(new Set(namesOf('rl_rej', 'rates').concat(namesOf('rl_del', 'rates'))))) {
      limiter.push({ label: zone + ' rejected', color: color('zone:' + zone), values: rateSeries(['rl_rej', zone].join(SEP)) });
      limiter.push({ label: zone + ' delayed', color: color('zone:' + zone), dash: '5 4', values: rateSeries(['rl_del', zone].join(SEP)) });
    }
    for (const zone of namesOf('lc_rej', 'rates')) {
      limiter.push({ label: zone + ' conn rejected', color: color('conn:' + zone), dash: '2 3', values: rateSeries(['lc_rej', zone].join(SEP)) });
    }
    const limEl = $('[data-chart="limiter"]');
    drawChart(limEl, { series: limiter });
    attachHover(limEl);

    const bulk = [];
    const ups = Array.from(new Set(namesOf('inflight', 'gauges').concat(namesOf('bh_rej', 'rates')))).sort();
    for (const up of ups) {
      bulk.push({ label: up + ' in flight', color: color('up:' + up), fmt: fmtCount, values: gaugeSeries(['inflight', up].join(SEP)) });
      bulk.push({ label: up + ' rejected/s', color: color('up:' + up), dash: '5 4', values: rateSeries(['bh_rej', up].join(SEP)) });
    }
    const bulkEl = $('[data-chart="bulkhead"]');
    drawChart(bulkEl, { series: bulk });
    attachHover(bulkEl);

    const grid = byTestId('route-charts');
    const want = routes.join(SEP);
    if (grid.dataset.routes !== want) {
      grid.dataset.routes = want;
      grid.innerHTML = routes.length
        ? routes.map((r) => '<div class="route-chart" data-testid="route-chart" data-route="' + esc(r) + '"><h3>' + esc(r) + '</h3><div class="chart"></div></div>').join('')
        : '<p class="empty">No requests seen yet.</p>';
    }
    grid.querySelectorAll('[data-testid="route-chart"]').forEach((box) => {
      const r = box.dataset.route;
      const el = box.querySelector('.chart');
      drawChart(el, {
        height: 130,
        series: CLASSES.map((cls) => ({ label: cls, color: CLASS_COLORS[cls], values: rateSeries(['req', r, cls].join(SEP)) })),
      });
      attachHover(el);
    });
  }

  // ---------------------------------------------------------------------------------------------
  // KPIs, upstream table, zones, config
  // ---------------------------------------------------------------------------------------------

  function setText(id, text, value) {
    const el = byTestId(id);
    if (!el) return;
    el.textContent = text;
    if (value !== undefined) el.dataset.value = Number.isFinite(value) ? String(value) : '';
  }

  function renderKpis() {
    const last = samples.length ? samples[samples.length - 1] : null;
    const byClass = {};
    let total;
    if (last && last.ok && Object.keys(last.rates).length) {
      for (const [key, v] of Object.entries(last.rates)) {
        const p = key.split(SEP);
        if (p[0] !== 'req') continue;
        byClass[p[2]] = (byClass[p[2]] || 0) + v;
        total = (total || 0) + v;
      }
      if (total === undefined) total = 0;
    }
    setText('rps-total', fmtRate(total), total);
    setText('rps-5xx', fmtRate(total === undefined ? undefined : byClass['5xx'] || 0));
    setText('rps-429', fmtRate(total === undefined ? undefined : byClass['429'] || 0));
    const rl = sumMetric(lastMetrics, 'gateway_ratelimit_rejected_total');
    setText('ratelimit-rejected-total', fmtCount(rl), rl);
    setText('ratelimit-rejected-session', fmtCount(rateLimitedSession === null ? undefined : rateLimitedSession), rateLimitedSession === null ? undefined : rateLimitedSession);
    const bh = sumMetric(lastMetrics, 'gateway_bulkhead_rejected_total');
    setText('bulkhead-rejected-total', fmtCount(bh), bh);
  }

  function normBreaker(v) {
    if (typeof v === 'number') return BREAKER_STATES[v] || undefined;
    if (typeof v !== 'string') return undefined;
    const s = v.toLowerCase().replace(/[-\s]/g, '_').replace('halfopen', 'half_open');
    return BREAKER_STATES.includes(s) ? s : undefined;
  }

  /** Upstreams with their servers, from /status, completed from /metrics where /status is silent. */
  function upstreamModel() {
    const ups = new Map();
    const statusUps = lastStatus ? pick(lastStatus, 'upstreams') : undefined;
    for (const [name, u] of entries(statusUps, 'name', 'upstream')) {
      const servers = entries(pick(u, 'servers'), 'server', 'label', 'address').map(([label, s]) => {
        const srv = isObj(s) ? s : {};
        return {
          server: String(pick(srv, 'server', 'label') ?? label),
          address: pick(srv, 'address', 'addr'),
          healthy: pick(srv, 'healthy'),
          ejected: pick(srv, 'ejected'),
          ejectedForMs: num(pick(srv, 'ejectedForMs', 'ejected_for_ms')),
          timesEjected: num(pick(srv, 'timesEjected', 'times_ejected')),
          ejectionsTotal: num(pick(srv, 'ejectionsTotal', 'ejections_total')),
          inflight: num(pick(srv, 'inflight', 'inFlight', 'in_flight')),
          consecutiveFailures: num(pick(srv, 'consecutiveFailures', 'consecutive_failures')),
          available: pick(srv, 'available'),
          lastCheck: pick(srv, 'lastCheck', 'last_check', 'lastCheckAt', 'last_check_at'),
        };
      });
      ups.set(name, {
        name,
        breaker: normBreaker(pick(u, 'breaker', 'breakerState', 'breaker_state', 'circuit')),
        inflight: num(pick(u, 'inflight', 'inFlight', 'in_flight')),
        maxInflight: num(pick(u, 'maxInflight', 'max_inflight')),
        queued: num(pick(u, 'queued')),
        queue: num(pick(u, 'queue')),
        windowCalls: num(pick(u, 'breakerWindowCalls', 'breaker_window_calls')),
        windowFailures: num(pick(u, 'breakerWindowFailures', 'breaker_window_failures')),
        servers,
      });
    }
    // Fill gaps from /metrics (also the whole table while /status is unreadable).
    for (const m of lastMetrics || []) {
      const up = m.labels.upstream;
      if (!up) continue;
      if (!ups.has(up)) ups.set(up, { name: up, servers: [] });
      const u = ups.get(up);
      if (m.name === 'gateway_circuit_state' && u.breaker === undefined) u.breaker = normBreaker(m.value);
      if (m.name === 'gateway_upstream_inflight' && u.inflight === undefined) u.inflight = m.value;
      if ((m.name === 'gateway_upstream_healthy' || m.name === 'gateway_upstream_ejections_total') && m.labels.server) {
        let s = u.servers.find((x) => x.server === m.labels.server);
        if (!s) {
          s = { server: m.labels.server };
          u.servers.push(s);
        }
        if (m.name === 'gateway_upstream_healthy' && s.healthy === undefined) s.healthy = m.value > 0;
        if (m.name === 'gateway_upstream_ejections_total' && s.ejectionsTotal === undefined) s.ejectionsTotal = m.value;
      }
    }
    return Array.from(ups.values()).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  function serverState(s) {
    if (s.healthy === false) return 'down';
    if (s.ejected === true || (s.ejected === undefined && s.ejectedForMs > 0)) return 'ejected';
    if (s.healthy === true || s.ejected === false) return 'healthy';
    return 'unknown';
  }

  /** The last active health check: an object {atUnixMs, ok, detail, durationMs} or a time. */
  function fmtCheck(c) {
    if (c === undefined || c === null) return '—';
    if (!isObj(c)) return fmtWhen(c);
    const at = num(pick(c, 'atUnixMs', 'at_unix_ms', 'at'));
    const ok = pick(c, 'ok');
    const detail = pick(c, 'detail');
    const dur = num(pick(c, 'durationMs', 'duration_ms'));
    return '<span class="' + (ok === false ? 'check-bad' : ok === true ? 'check-ok' : '') + '">' + (ok === false ? '✗ ' : ok === true ? '✓ ' : '') + esc(detail === undefined ? '' : detail) + '</span>' +
      (dur !== undefined ? ' <span class="muted">' + fmtCount(dur) + ' ms</span>' : '') +
      (at !== undefined ? ' <span class="muted">· ' + esc(fmtAgo(Date.now() - at)) + '</span>' : '');
  }

  function cell(v, fmt) {
    return v === undefined || v === null ? '—' : fmt ? fmt(v) : esc(v);
  }

  function renderUpstreams() {
    const host = byTestId('upstreams');
    const model = upstreamModel();
    if (!model.length) {
      host.innerHTML = '<p class="empty">' + (lastStatus ? 'No upstreams in /status.' : 'Waiting for /status…') + '</p>';
      setText('servers-available', '—');
      return;
    }
    let avail = 0, all = 0;
    const html = model.map((u) => {
      const breaker = u.breaker || 'unknown';
      const pct = u.maxInflight > 0 && Number.isFinite(u.inflight) ? Math.min(100, (100 * u.inflight) / u.maxInflight) : 0;
      const rows = u.servers.map((s) => {
        const state = serverState(s);
        all++;
        if (state === 'healthy') avail++;
        const ejecting = s.ejected === true || s.ejectedForMs > 0;
        const countdown = ejecting && Number.isFinite(s.ejectedForMs)
          ? '<span class="countdown" data-testid="ejection-countdown" data-remaining-ms="' + s.ejectedForMs + '">' + fmtSeconds(s.ejectedForMs) + '</span>'
          : ejecting ? 'ejected' : '—';
        return '<tr class="server state-' + state + '" data-testid="server-row" data-upstream="' + esc(u.name) + '" data-server="' + esc(s.server) + '" data-state="' + state + '" data-healthy="' + (s.healthy === undefined ? '' : s.healthy) + '" data-ejected="' + ejecting + '">' +
          '<td><span class="mono">' + esc(s.server) + '</span>' + (s.address && s.address !== s.server ? '<div class="muted small mono">' + esc(s.address) + '</div>' : '') + '</td>' +
          '<td><span class="pill ' + state + '" data-testid="server-state">' + state + '</span></td>' +
          '<td>' + countdown + '</td>' +
          '<td class="num">' + cell(s.timesEjected, fmtCount) + '</td>' +
          '<td class="num">' + cell(s.ejectionsTotal, fmtCount) + '</td>' +
          '<td class="num">' + cell(s.inflight, fmtCount) + '</td>' +
          '<td class="num">' + cell(s.consecutiveFailures, fmtCount) + '</td>' +
          '<td>' + fmtCheck(s.lastCheck) + '</td>' +
          '</tr>';
      }).join('');
      return '<div class="upstream breaker-' + breaker + '" data-testid="upstream" data-upstream="' + esc(u.name) + '">' +
        '<div class="up-head"><h3>' + esc(u.name) + '</h3>' +
        '<span class="badge ' + breaker + '" data-testid="breaker-state" data-upstream="' + esc(u.name) + '" data-state="' + breaker + '" title="circuit breaker">breaker ' + breaker.replace('_', '-') + '</span>' +
        '<span class="inflight" title="in flight / max_inflight (bulkhead)">in flight <b data-testid="upstream-inflight">' + cell(u.inflight, fmtCount) + '</b> / ' + cell(u.maxInflight, fmtCount) +
        '<span class="bar"><span style="width:' + pct.toFixed(1) + '%"></span></span></span>' +
        '<span class="queued">queued <b>' + cell(u.queued, fmtCount) + '</b>' + (u.queue !== undefined ? ' / ' + fmtCount(u.queue) : '') + '</span>' +
        (u.windowCalls !== undefined ? '<span class="queued" title="calls and failures in the breaker\'s current window">breaker window <b>' + fmtCount(u.windowFailures || 0) + '</b> failed of <b>' + fmtCount(u.windowCalls) + '</b></span>' : '') +
        '</div>' +
        '<table class="servers"><thead><tr><th>Server</th><th>State</th><th>Ejected for</th><th class="num">Times ejected</th><th class="num">Ejections</th><th class="num">In flight</th><th class="num">Consecutive failures</th><th>Last check</th></tr></thead>' +
        '<tbody>' + (rows || '<tr><td colspan="8" class="empty">no servers</td></tr>') + '</tbody></table></div>';
    }).join('');
    host.innerHTML = html;
    setText('servers-available', all ? avail + ' / ' + all : '—');
    const kpi = byTestId('servers-available');
    if (kpi) kpi.classList.toggle('bad', all > 0 && avail < all);
    tickCountdowns();
  }

  /** Ejection countdowns tick down between polls from the last /status reading. */
  function tickCountdowns() {
    const elapsed = performance.now() - statusFetchedAt;
    document.querySelectorAll('[data-testid="ejection-countdown"]').forEach((el) => {
      const base = Number(el.dataset.remainingMs);
      if (Number.isFinite(base)) el.textContent = fmtSeconds(base - elapsed);
    });
  }

  function renderZones() {
    const host = byTestId('zones');
    const zones = lastStatus ? pick(lastStatus, 'zones') : undefined;
    const req = entries(lastStatus ? pick(lastStatus, 'limitReqZones', 'limit_req_zones') ?? pick(zones, 'limitReq', 'limit_req') : undefined, 'name', 'zone');
    const conn = entries(lastStatus ? pick(lastStatus, 'limitConnZones', 'limit_conn_zones') ?? pick(zones, 'limitConn', 'limit_conn') : undefined, 'name', 'zone');
    const rateOf = (kind, zone) => {
      const last = samples.length ? samples[samples.length - 1] : null;
      return last && last.ok ? last.rates[[kind, zone].join(SEP)] : undefined;
    };
    const total = (name, zone) => sumMetric(lastMetrics, name, (l) => l.zone === zone);
    if (!req.length && !conn.length) {
      host.innerHTML = '<p class="empty">' + (lastStatus ? 'No zones configured.' : '—') + '</p>';
      return;
    }
    const rows = req.map(([zone, z]) => {
      const keys = num(pick(z, 'keys', 'keysTracked', 'keys_tracked'));
      const maxKeys = num(pick(z, 'maxKeys', 'max_keys'));
      const rate = pick(z, 'rate');
      const rej = total('gateway_ratelimit_rejected_total', zone);
      // SPEC §10.1: cluster zones decide in the shared store; "fallback" while they decide locally.
      const scope = pick(z, 'scope');
      const fb = pick(z, 'fallback') === true;
      const kind = 'req' + (scope === 'cluster' ? ' · cluster' + (fb ? ' <span class="pill down" data-testid="zone-fallback">fallback</span>' : '') : '');
      return '<tr data-testid="zone-row" data-zone="' + esc(zone) + '" data-kind="limit_req" data-scope="' + esc(scope ?? 'local') + '" data-fallback="' + fb + '"><td class="mono">' + esc(zone) + '</td><td>' + kind + '</td><td>' + cell(rate, (r) => esc(typeof r === 'object' ? JSON.stringify(r) : r)) + '</td>' +
        '<td class="num">' + cell(keys, fmtCount) + (maxKeys !== undefined ? ' <span class="muted">/ ' + fmtCount(maxKeys) + '</span>' : '') + '</td>' +
        '<td class="num' + (rej > 0 ? ' hot' : '') + '" data-testid="zone-rejected" data-value="' + (Number.isFinite(rej) ? rej : '') + '">' + cell(rej, fmtCount) + ' <span class="muted">(' + fmtRate(rateOf('rl_rej', zone)) + '/s)</span></td>' +
        '<td class="num">' + cell(total('gateway_ratelimit_delayed_total', zone), fmtCount) + ' <span class="muted">(' + fmtRate(rateOf('rl_del', zone)) + '/s)</span></td></tr>';
    });
    for (const [zone, z] of conn) {
      const keys = num(pick(z, 'keys', 'keysTracked', 'keys_tracked'));
      const maxKeys = num(pick(z, 'maxKeys', 'max_keys'));
      const inflight = num(pick(z, 'inflight', 'inFlight', 'in_flight'));
      const rej = total('gateway_limit_conn_rejected_total', zone);
      rows.push('<tr data-testid="zone-row" data-zone="' + esc(zone) + '" data-kind="limit_conn"><td class="mono">' + esc(zone) + '</td><td>conn</td><td>' + (inflight !== undefined ? fmtCount(inflight) + ' in flight' : '—') + '</td>' +
        '<td class="num">' + cell(keys, fmtCount) + (maxKeys !== undefined ? ' <span class="muted">/ ' + fmtCount(maxKeys) + '</span>' : '') + '</td>' +
        '<td class="num' + (rej > 0 ? ' hot' : '') + '" data-testid="zone-rejected" data-value="' + (Number.isFinite(rej) ? rej : '') + '">' + cell(rej, fmtCount) + ' <span class="muted">(' + fmtRate(rateOf('lc_rej', zone)) + '/s)</span></td><td class="num">—</td></tr>');
    }
    const store = lastStatus ? pick(lastStatus, 'limitStore', 'limit_store') : undefined;
    const storeLine = isObj(store)
      ? '<p data-testid="limit-store" data-available="' + (pick(store, 'available') === true) + '">Limit store: ' + esc(pick(store, 'mode') ?? '?') + ' ' +
        '<span class="pill ' + (pick(store, 'available') === true ? 'healthy' : 'down') + '">' + (pick(store, 'available') === true ? 'deciding' : 'unreachable: local fallback') + '</span> ' +
        '<span class="muted">' + cell(num(pick(store, 'gateways')), fmtCount) + ' gateways live</span></p>'
      : '';
    host.innerHTML = storeLine + '<table><thead><tr><th>Zone</th><th>Kind</th><th>Rate</th><th class="num">Keys</th><th class="num">Rejected</th><th class="num">Delayed</th></tr></thead><tbody>' + rows.join('') + '</tbody></table>';
  }

  function renderConfig() {
    const c = lastStatus ? pick(lastStatus, 'config') : undefined;
    const path = pick(c, 'path', 'file');
    const sha = pick(c, 'sha256', 'hash');
    const pathEl = byTestId('config-path');
    pathEl.textContent = path === undefined ? '—' : String(path);
    const shaEl = byTestId('config-sha256');
    shaEl.textContent = sha === undefined ? '—' : String(sha).slice(0, 16) + (String(sha).length > 16 ? '…' : '');
    shaEl.title = sha === undefined ? '' : String(sha);
    byTestId('config-loaded-at').innerHTML = cell(pick(c, 'loadedAt', 'loaded_at'), fmtWhen);
    const lr = pick(c, 'lastReload', 'last_reload');
    const result = pick(lr, 'result');
    const lrEl = byTestId('config-last-reload');
    lrEl.dataset.result = result === undefined ? '' : String(result);
    if (result === undefined) {
      lrEl.innerHTML = '<span class="muted">none since start</span>';
    } else {
      const ok = String(result) === 'ok';
      const err = pick(lr, 'error');
      lrEl.innerHTML = '<span class="pill ' + (ok ? 'healthy' : 'down') + '">' + esc(result) + '</span> ' + cell(pick(lr, 'at'), fmtWhen) + (err ? '<div class="error-text">' + esc(err) + '</div>' : '');
    }
    const parts = (lastMetrics || [])
      .filter((m) => m.name === 'gateway_config_reloads_total')
      .sort((x, y) => (x.labels.result === 'ok' ? -1 : y.labels.result === 'ok' ? 1 : 0))
      .map((m) => esc(m.labels.result || '?') + ' ' + fmtCount(m.value));
    byTestId('config-reloads').innerHTML = parts.length ? parts.join(' · ') : '—';

    const routes = entries(lastStatus ? pick(lastStatus, 'routes') : undefined, 'pathPrefix', 'path_prefix');
    const last = samples.length ? samples[samples.length - 1] : null;
    byTestId('routes').innerHTML = routes.length
      ? '<table><thead><tr><th>Path prefix</th><th>Upstream</th><th>Limits</th><th class="num">Req/s</th></tr></thead><tbody>' +
        routes.map(([name, r]) => {
          const prefix = pick(r, 'pathPrefix', 'path_prefix') ?? name;
          let rps;
          if (last && last.ok) {
            for (const [key, v] of Object.entries(last.rates)) {
              const p = key.split(SEP);
              if (p[0] === 'req' && (p[1] === prefix || p[1] === pick(r, 'name', 'route'))) rps = (rps || 0) + v;
            }
          }
          const zonesOf = (v) => (Array.isArray(v) ? v.map((z) => (isObj(z) ? pick(z, 'zone', 'name') : z)).filter((z) => z !== undefined) : []);
          const limits = zonesOf(pick(r, 'limitReq', 'limit_req')).map((z) => 'req:' + z).concat(zonesOf(pick(r, 'limitConn', 'limit_conn')).map((z) => 'conn:' + z));
          return '<tr data-testid="route-row"><td class="mono">' + esc(prefix) + '</td><td>' + cell(pick(r, 'upstream')) + '</td><td class="muted small">' + (limits.length ? esc(limits.join(', ')) : '—') + '</td><td class="num">' + fmtRate(rps) + '</td></tr>';
        }).join('') + '</tbody></table>'
      : '<p class="empty">—</p>';
  }

  function renderConnection(st, mt) {
    const el = byTestId('connection');
    let state, text, detail = '';
    if (st.ok && mt.ok) {
      state = 'ok';
      text = 'live';
      detail = 'updated ' + new Date().toLocaleTimeString('en-GB', { hour12: false });
    } else if (st.ok || mt.ok) {
      state = 'degraded';
      text = (st.ok ? '/metrics' : '/status') + ' failing';
      detail = st.ok ? mt.error : st.error;
    } else {
      state = 'unreachable';
      text = 'admin unreachable';
      detail = lastOkAt ? 'last OK ' + fmtAgo(Date.now() - lastOkAt) : st.error;
    }
    el.dataset.state = state;
    byTestId('connection-text').textContent = text;
    byTestId('connection-detail').textContent = detail || '';
    document.body.classList.toggle('stale', state === 'unreachable');
  }

  function renderAll() {
    renderKpis();
    renderCharts();
    renderUpstreams();
    renderZones();
    renderConfig();
  }

  // ---------------------------------------------------------------------------------------------
  // Start
  // ---------------------------------------------------------------------------------------------

  function start() {
    renderAll();
    setInterval(tickCountdowns, 100);
    let resizeTimer = 0;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(renderCharts, 100);
    });
    poll().finally(schedule);
  }

  // Exposed read-only for tests and curious users: window.gatewayDashboard.samples().length etc.
  window.gatewayDashboard = Object.freeze({
    samples: () => samples.slice(),
    parseMetrics,
  });

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
