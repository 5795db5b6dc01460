// Every agent at a glance: mode, containment, integrity, latest verdict, a sparkline.
import {api, enc} from '../api.js';
import {sparkline} from '../chart.js';
import {ago, containment, h, percent, replace, verdict} from '../dom.js';

/** One request for the page: each agent comes with its score and last 20 verdicts. */
function summary(agent) {
  const score = agent.integrity || null;
  return {agent, score, verdicts: score ? score.recent_verdicts : []};
}

const SORTS = {
  last_seen: (a, b) => (b.agent.last_seen_at || 0) - (a.agent.last_seen_at || 0),
  ratio: (a, b) => (a.score?.integrity_ratio ?? 1) - (b.score?.integrity_ratio ?? 1),
  name: (a, b) => label(a.agent).localeCompare(label(b.agent)),
};

function label(agent) {
  return agent.name || agent.agent_id;
}

function row(entry) {
  const {agent, score, verdicts} = entry;
  const contained = agent.containment_status !== 'active';
  const violating = score && score.latest_verdict === 'boundary_violation';
  return h('tr', {class: [contained ? 'contained' : '', violating ? 'violating' : ''].join(' ').trim() || null,
    'data-agent-id': agent.agent_id},
  h('th', {scope: 'row'}, h('a', {href: `#/agents/${enc(agent.agent_id)}`}, label(agent)),
    agent.name ? h('div', {class: 'sub'}, agent.agent_id) : null),
  h('td', {}, agent.enforcement_mode),
  h('td', {'data-col': 'containment'}, containment(agent.containment_status)),
  h('td', {'data-col': 'ratio'}, score ? percent(score.integrity_ratio) : '—',
    score ? h('div', {class: 'sub'}, `${score.total_checks} checks`) : null),
  h('td', {'data-col': 'verdict'}, verdict(score && score.latest_verdict)),
  h('td', {}, ago(agent.last_seen_at)),
  h('td', {}, verdicts && verdicts.length ? sparkline(verdicts) : '—'));
}

export async function agentsView() {
  const page = await api('/v1/agents?limit=500&include=integrity');
  const entries = page.items.map(summary);
  const body = h('tbody');
  const filter = h('input', {id: 'agent-filter', type: 'search', placeholder: 'name or id'});
  const stateSelect = h('select', {id: 'agent-state'},
    ['all', 'active', 'paused', 'killed'].map((v) => h('option', {value: v}, v)));
  const sortSelect = h('select', {id: 'agent-sort'},
    [['last_seen', 'last seen'], ['ratio', 'lowest integrity'], ['name', 'name']]
      .map(([v, t]) => h('option', {value: v}, t)));
  const count = h('p', {class: 'sub', 'aria-live': 'polite'});

  function draw() {
    const text = filter.value.trim().toLowerCase();
    const wanted = stateSelect.value;
    const shown = entries
      .filter(({agent}) => !text || label(agent).toLowerCase().includes(text)
        || agent.agent_id.toLowerCase().includes(text))
      .filter(({agent}) => wanted === 'all' || agent.containment_status === wanted)
      .sort(SORTS[sortSelect.value]);
    replace(body, shown.map(row));
    replace(count, `${shown.length} of ${page.total} agents`);
  }
  for (const control of [filter, stateSelect, sortSelect]) control.addEventListener('input', draw);
  draw();
  return h('section', {},
    h('h1', {}, 'Agents'),
    h('div', {class: 'filters'},
      h('label', {for: 'agent-filter'}, 'Filter'), filter,
      h('label', {for: 'agent-state'}, 'Containment'), stateSelect,
      h('label', {for: 'agent-sort'}, 'Sort by'), sortSelect),
    count,
    h('div', {class: 'scroll'}, h('table', {class: 'agents'},
      h('thead', {}, h('tr', {}, ['Agent', 'Mode', 'Containment', 'Integrity', 'Latest verdict',
        'Last seen', 'Recent verdicts'].map((t) => h('th', {scope: 'col'}, t)))),
      body)));
}
