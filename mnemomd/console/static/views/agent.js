// One agent: integrity over time, checkpoints, traces, drift, timeline, policy, card,
// and the controls the signed-in role allows.
import {api, enc, may} from '../api.js';
import {ratioChart} from '../chart.js';
import {containment, errorBox, h, jsonBlock, percent, replace, verdict, when} from '../dom.js';

const MODES = ['observe', 'nudge', 'enforce'];
const NUDGE_STRATEGIES = ['always', 'sampling', 'threshold', 'off'];

async function optional(path) {
  try { return await api(path); } catch (error) { return {error}; }
}

export function concernList(concerns) {
  if (!concerns || !concerns.length) return h('p', {class: 'sub'}, 'No concerns.');
  return h('ul', {class: 'concerns'}, concerns.map((concern) => h('li', {class: 'concern'},
    h('span', {class: `severity sev-${['low', 'medium', 'high', 'critical'].includes(concern.severity) ? concern.severity : 'other'}`},
      String(concern.severity || '?')), ' ',
    h('strong', {}, String(concern.category || 'concern')), ': ',
    h('span', {class: 'description'}, String(concern.description || '')),
    concern.evidence ? h('blockquote', {class: 'evidence'}, h('span', {class: 'sub'}, 'Evidence: '),
      String(concern.evidence)) : null)));
}

export function checkpointItem(checkpoint) {
  return h('article', {class: 'checkpoint', 'data-checkpoint-id': checkpoint.id},
    h('header', {}, verdict(checkpoint.verdict), ' ',
      h('a', {href: `#/checkpoints/${enc(checkpoint.id)}`}, checkpoint.id), ' ',
      h('span', {class: 'sub'}, `${when(checkpoint.created_at)} · ${checkpoint.provider}`,
        checkpoint.model ? ` · ${checkpoint.model}` : '',
        checkpoint.synthetic ? ` · synthetic (${checkpoint.synthetic_reason || 'no analysis'})` : '')),
    checkpoint.reasoning_summary
      ? h('p', {class: 'summary'}, h('span', {class: 'sub'}, 'Reasoning summary: '), checkpoint.reasoning_summary)
      : null,
    concernList(checkpoint.concerns));
}

function section(title, ...children) {
  return h('section', {class: 'card', 'aria-label': title}, h('h2', {}, title), children);
}

function listOrEmpty(items, make, empty) {
  return items && items.length ? h('ul', {class: 'plain'}, items.map((item) => h('li', {}, make(item))))
    : h('p', {class: 'sub'}, empty);
}

function timelineText(entry) {
  const data = entry.data || {};
  const bits = Object.entries(data).filter(([, v]) => v !== null && typeof v !== 'object')
    .slice(0, 6).map(([k, v]) => `${k}: ${v}`);
  return bits.join(' · ');
}

function controls(me, agent, settings, refresh) {
  const id = enc(agent.agent_id);
  const message = h('div', {class: 'message', 'aria-live': 'polite'});
  async function act(work, done) {
    replace(message);
    try {
      await work();
      replace(message, h('p', {class: 'ok'}, done));
      await refresh();
    } catch (error) {
      replace(message, errorBox(error));
    }
  }

  const mode = h('select', {id: 'mode'}, MODES.map((m) =>
    h('option', {value: m, selected: m === agent.enforcement_mode}, m)));
  const modeForm = h('form', {class: 'inline', onsubmit: (event) => {
    event.preventDefault();
    act(() => api(`/v1/agents/${id}/enforcement`, {method: 'PUT', body: {mode: mode.value}}),
      `Mode set to ${mode.value}.`);
  }}, h('label', {for: 'mode'}, 'Enforcement mode'), mode, h('button', {type: 'submit'}, 'Save mode'));

  const aip = h('input', {id: 'aip', type: 'checkbox', checked: settings.aip_enabled});
  const aap = h('input', {id: 'aap', type: 'checkbox', checked: settings.aap_enabled});
  const strategy = h('select', {id: 'nudge-strategy'}, NUDGE_STRATEGIES.map((m) =>
    h('option', {value: m, selected: m === settings.nudge_strategy}, m)));
  const settingsForm = h('form', {class: 'inline', onsubmit: (event) => {
    event.preventDefault();
    act(() => api(`/v1/agents/${id}/settings`, {method: 'PUT', body: {
      aip_enabled: aip.checked, aap_enabled: aap.checked, nudge_strategy: strategy.value}}),
    'Settings saved.');
  }}, aip, h('label', {for: 'aip'}, 'Integrity checks (AIP)'),
  aap, h('label', {for: 'aap'}, 'AP-traces (AAP)'),
  h('label', {for: 'nudge-strategy'}, 'Nudges'), strategy,
  h('button', {type: 'submit'}, 'Save settings'));

  const reason = h('input', {id: 'reason', type: 'text', maxlength: 500, placeholder: 'why (recorded in the containment log)'});
  const confirmBox = h('div', {class: 'confirm', role: 'group', 'aria-live': 'polite'});
  function containmentAction(action, label) {
    return h('button', {type: 'button', 'data-action': action, class: action === 'kill' ? 'danger' : null,
      onclick: () => {
        const run = () => act(() => api(`/v1/agents/${id}/containment/${action}`,
          {method: 'POST', body: reason.value.trim() ? {reason: reason.value.trim()} : {}}),
        `${label} done.`);
        if (action !== 'kill') { run(); return; }
        replace(confirmBox,
          h('p', {}, h('strong', {}, 'Kill '), 'stops every agent of this API key until an owner reactivates it. Kill?'),
          h('button', {type: 'button', class: 'danger', 'data-action': 'confirm-kill',
            onclick: () => { replace(confirmBox); run(); }}, 'Yes, kill'), ' ',
          h('button', {type: 'button', onclick: () => replace(confirmBox)}, 'Cancel'));
      }}, label);
  }
  const actions = [];
  if (may(me, 'admin')) actions.push(containmentAction('pause', 'Pause'), containmentAction('resume', 'Resume'));
  if (may(me, 'owner')) actions.push(containmentAction('kill', 'Kill'), containmentAction('reactivate', 'Reactivate'));

  return section('Controls',
    h('p', {class: 'sub'}, `Actions are recorded as ${me.name}.`),
    modeForm, settingsForm,
    h('div', {class: 'inline'}, h('label', {for: 'reason'}, 'Reason'), reason, actions),
    confirmBox, message);
}

export async function agentView(me, agentId) {
  const root = h('div', {class: 'agent'});
  const id = enc(agentId);
  async function load() {
    const [agent, score, checkpoints, traces, drift, timeline, contained, settings, policy, card] =
      await Promise.all([
        api(`/v1/agents/${id}`), api(`/v1/agents/${id}/integrity`),
        api(`/v1/agents/${id}/checkpoints?limit=200`), api(`/v1/agents/${id}/traces?limit=50`),
        api(`/v1/agents/${id}/drift?limit=50`), api(`/v1/agents/${id}/timeline?limit=100`),
        api(`/v1/agents/${id}/containment`), api(`/v1/agents/${id}/settings`),
        optional(`/v1/agents/${id}/policy/resolved`), optional(`/v1/agents/${id}/card`)]);
    const name = agent.name || agent.agent_id;
    replace(root,
      h('p', {}, h('a', {href: '#/agents'}, '← All agents')),
      h('h1', {}, name),
      h('dl', {class: 'facts'},
        h('dt', {}, 'Agent id'), h('dd', {}, agent.agent_id),
        h('dt', {}, 'Mode'), h('dd', {'data-testid': 'mode'}, agent.enforcement_mode),
        h('dt', {}, 'Containment'), h('dd', {'data-testid': 'containment'}, containment(agent.containment_status),
          agent.containment_scope ? ` (scope ${agent.containment_scope})` : '',
          agent.containment_reason ? ` — ${agent.containment_reason}` : ''),
        h('dt', {}, 'Integrity'), h('dd', {'data-testid': 'ratio'}, percent(score.integrity_ratio),
          ` of ${score.total_checks} checks clear (${score.review_count} review, ${score.violation_count} violation)`),
        h('dt', {}, 'Latest verdict'), h('dd', {}, verdict(score.latest_verdict)),
        h('dt', {}, 'Last seen'), h('dd', {}, when(agent.last_seen_at))),
      me && may(me, 'admin') ? controls(me, agent, settings, load) : null,
      section('Integrity over time', checkpoints.items.length ? ratioChart(checkpoints.items)
        : h('p', {class: 'sub'}, 'No checkpoints yet.'),
      h('p', {class: 'legend sub'}, '● clear  ■ review needed  ✗ violation — the line is the share of clear checks so far')),
      section(`Checkpoints (${checkpoints.total})`, h('div', {class: 'checkpoints'}, checkpoints.items.map(checkpointItem))),
      section(`AP-traces (${traces.total})`, listOrEmpty(traces.items, (trace) => [
        h('span', {class: trace.verified ? 'ok' : 'bad'}, trace.verified ? '✓ verified' : trace.verified === false ? '✗ not verified' : '… unverified'),
        ' ', trace.id, ' ', h('span', {class: 'sub'}, when(trace.created_at)),
        trace.verification ? jsonBlock(trace.verification) : null], 'No AP-traces.')),
      section(`Drift alerts (${drift.total})`, listOrEmpty(drift.items, (alert) => [
        h('strong', {}, `${alert.severity || 'drift'} `), `${alert.source} · `,
        h('span', {class: 'sub'}, when(alert.created_at)), jsonBlock(alert.alert)], 'No drift alerts.')),
      section('Containment log', listOrEmpty(contained.log, (event) => [
        h('strong', {}, event.action), ` ${event.from_status} → ${event.to_status} by `,
        h('span', {class: 'actor'}, event.actor),
        event.reason ? ` — ${event.reason}` : '', ' ', h('span', {class: 'sub'}, when(event.created_at))],
      'No containment changes.')),
      section('Timeline', listOrEmpty(timeline.items, (entry) => [
        h('span', {class: 'kind'}, entry.kind), ' ', h('span', {class: 'sub'}, when(entry.created_at)), ' ',
        timelineText(entry)], 'Nothing yet.')),
      section('Tool policy', policy.error ? errorBox(policy.error) : jsonBlock(policy)),
      section('Alignment card', card.error ? errorBox(card.error) : jsonBlock(card.card)));
  }
  await load();
  return root;
}
