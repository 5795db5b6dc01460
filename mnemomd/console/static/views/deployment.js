// The deployment: readiness, license, version, and the key figures of /metrics.
import {api, plain} from '../api.js';
import {errorBox, h, replace, when} from '../dom.js';

const SAMPLE_SECONDS = 5;

/** Prometheus text format: [{name, labels, value}] (comments and bad lines skipped). */
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const found = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!found) continue;
    const labels = {};
    for (const pair of (found[3] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    const value = Number(found[4].replace(/Inf$/, 'Infinity'));
    if (Number.isNaN(value) && found[4] !== 'NaN') continue;  // not a sample line
    samples.push({name: found[1], labels, value});
  }
  return samples;
}

export function total(samples, name, where = () => true) {
  return samples.filter((s) => s.name === name && where(s.labels)).reduce((a, s) => a + s.value, 0);
}

/** The figures of one sample; rates come from two. */
export function figures(samples) {
  const proxied = (labels) => !['none', 'api', 'console'].includes(labels.provider);
  return {
    calls: total(samples, 'gateway_requests_total', proxied),
    durationSum: total(samples, 'gateway_request_duration_seconds_sum'),
    durationCount: total(samples, 'gateway_request_duration_seconds_count'),
    ttfbSum: total(samples, 'gateway_upstream_ttfb_seconds_sum'),
    ttfbCount: total(samples, 'gateway_upstream_ttfb_seconds_count'),
    verdicts: total(samples, 'gateway_aip_checks_total'),
    lagSum: total(samples, 'gateway_reactor_lag_seconds_sum'),
    lagCount: total(samples, 'gateway_reactor_lag_seconds_count'),
    licenseSeconds: total(samples, 'gateway_license_seconds_to_expiry'),
    licenseState: (samples.find((s) => s.name === 'gateway_license_state' && s.value === 1) || {labels: {}}).labels.state,
  };
}

function mean(sum, count) {
  return count > 0 ? sum / count : null;
}

function ms(seconds) {
  return seconds === null || Number.isNaN(seconds) ? '—' : `${(seconds * 1000).toFixed(1)} ms`;
}

function rates(before, after, seconds) {
  const d = (k) => after[k] - before[k];
  return {
    callsPerSecond: d('calls') / seconds,
    verdictsPerMinute: d('verdicts') / seconds * 60,
    duration: mean(d('durationSum'), d('durationCount')),
    ttfb: mean(d('ttfbSum'), d('ttfbCount')),
    lag: mean(d('lagSum'), d('lagCount')),
  };
}

function checksTable(checks) {
  const known = new Set(['status', 'latency_ms', 'ok']);
  return h('div', {class: 'scroll'}, h('table', {class: 'checks'},
    h('thead', {}, h('tr', {}, ['Check', 'Status', 'Latency', 'Details'].map((t) => h('th', {scope: 'col'}, t)))),
    h('tbody', {}, Object.entries(checks).map(([name, check]) => {
      const good = check.status === 'ok' || check.ok === true;
      const details = Object.entries(check).filter(([k, v]) => !known.has(k) && v !== null && typeof v !== 'object')
        .map(([k, v]) => `${k}: ${v}`).join(' · ');
      return h('tr', {'data-check': name}, h('th', {scope: 'row'}, name),
        h('td', {class: good ? 'ok' : 'bad'}, good ? '✓ ' : '! ', String(check.status)),
        h('td', {}, typeof check.latency_ms === 'number' ? `${check.latency_ms} ms` : '—'),
        h('td', {}, details || '—'));
    }))));
}

export async function deploymentView() {
  const root = h('div', {});
  const metricsBox = h('div', {'aria-live': 'polite'});
  let previous = null;
  let timer = null;

  async function sample() {
    try {
      const answer = await plain('/metrics');
      if (answer.status !== 200) throw new Error(`/metrics answered ${answer.status}`);
      const now = figures(parseMetrics(answer.text));
      const taken = Date.now();
      const shown = previous ? rates(previous.figures, now, (taken - previous.taken) / 1000) : null;
      previous = {figures: now, taken};
      const rows = [
        ['Proxied calls', shown ? `${shown.callsPerSecond.toFixed(2)} /s` : `${now.calls} in total`],
        ['Request duration (mean, to end of stream)', ms(shown ? shown.duration : mean(now.durationSum, now.durationCount))],
        ['Upstream time to first byte (mean)', ms(shown ? shown.ttfb : mean(now.ttfbSum, now.ttfbCount))],
        ['Added latency (mean duration − upstream first byte)', shown
          ? ms(shown.duration !== null && shown.ttfb !== null ? shown.duration - shown.ttfb : null)
          : ms(mean(now.durationSum, now.durationCount) !== null && mean(now.ttfbSum, now.ttfbCount) !== null
            ? mean(now.durationSum, now.durationCount) - mean(now.ttfbSum, now.ttfbCount) : null)],
        ['Verdicts', shown ? `${shown.verdictsPerMinute.toFixed(1)} /min` : `${now.verdicts} in total`],
        ['Reactor lag (mean)', ms(shown ? shown.lag : mean(now.lagSum, now.lagCount))],
      ];
      replace(metricsBox, h('table', {class: 'figures'}, h('tbody', {}, rows.map(([k, v]) =>
        h('tr', {}, h('th', {scope: 'row'}, k), h('td', {}, v))))),
      h('p', {class: 'sub'}, shown ? `Rates over the last ${SAMPLE_SECONDS} s.`
        : `Totals since start; rates appear after the next sample (${SAMPLE_SECONDS} s).`));
    } catch (error) {
      replace(metricsBox, errorBox(error));
    }
  }

  const [ready, legacy, version] = await Promise.all([plain('/health/ready'), plain('/health'),
    api('/v1/version')]);
  const readiness = JSON.parse(ready.text);
  const info = JSON.parse(legacy.text);
  const license = (readiness.checks || {}).license || {};
  await sample();
  const figuresNow = previous.figures;
  const daysLeft = Number.isFinite(figuresNow.licenseSeconds)
    ? `${Math.floor(figuresNow.licenseSeconds / 86400)} days left` : 'no expiry (no verified license)';
  replace(root,
    h('h1', {}, 'Deployment'),
    h('section', {class: 'card'}, h('h2', {}, 'Status'),
      h('dl', {class: 'facts'},
        h('dt', {}, 'Readiness'), h('dd', {'data-testid': 'readiness'},
          readiness.status === 'ok' ? '✓ ' : '! ', readiness.status, ` (HTTP ${ready.status})`),
        h('dt', {}, 'Version'), h('dd', {'data-testid': 'version'}, version.version),
        h('dt', {}, 'Build'), h('dd', {'data-testid': 'build'}, version.build,
          ` · Python ${version.python} · Twisted ${version.twisted}`),
        h('dt', {}, 'Integrity checks'), h('dd', {}, info.aip_enabled ? 'on' : 'off'),
        h('dt', {}, 'License'), h('dd', {'data-testid': 'license'},
          license.status || figuresNow.licenseState || 'unknown', ' · ', daysLeft,
          license.expires_at ? ` (expires ${license.expires_at})` : ''),
        h('dt', {}, 'Checked'), h('dd', {}, when(Date.now())))),
    h('section', {class: 'card'}, h('h2', {}, 'Key figures'), metricsBox),
    h('section', {class: 'card'}, h('h2', {}, 'Readiness checks'), checksTable(readiness.checks || {})));
  timer = setInterval(sample, SAMPLE_SECONDS * 1000);
  return {node: root, stop: () => clearInterval(timer)};
}
