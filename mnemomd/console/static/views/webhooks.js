// Webhook endpoints, their recent deliveries, and test / redeliver for admins.
import {api, enc, may} from '../api.js';
import {errorBox, h, replace, when} from '../dom.js';

function status(delivery) {
  const icon = {delivered: '✓', failed: '✗', pending: '…'}[delivery.status] || '•';
  return h('span', {class: `delivery d-${['delivered', 'failed', 'pending'].includes(delivery.status) ? delivery.status : 'other'}`},
    h('span', {'aria-hidden': 'true'}, icon), ' ', delivery.status);
}

async function endpointCard(me, endpoint, refresh) {
  const id = enc(endpoint.id);
  const deliveries = await api(`/v1/webhooks/${id}/deliveries?limit=20`);
  const message = h('div', {class: 'message', 'aria-live': 'polite'});
  async function act(path, done) {
    try {
      await api(path, {method: 'POST'});
      replace(message, h('p', {class: 'ok'}, done));
      await refresh();
    } catch (error) { replace(message, errorBox(error)); }
  }
  const admin = may(me, 'admin');
  return h('section', {class: 'card', 'data-webhook-id': endpoint.id},
    h('h2', {}, endpoint.url),
    h('p', {}, endpoint.enabled ? '● enabled' : `■ disabled${endpoint.disabled_reason ? ` — ${endpoint.disabled_reason}` : ''}`,
      ` · events: ${endpoint.event_types.join(', ')} · failures in a row: ${endpoint.consecutive_failures}`,
      endpoint.description ? ` · ${endpoint.description}` : ''),
    admin ? h('p', {}, h('button', {type: 'button', onclick: () => act(`/v1/webhooks/${id}/test`, 'Test event queued.')},
      'Send test event')) : null,
    message,
    deliveries.items.length ? h('div', {class: 'scroll'}, h('table', {},
      h('thead', {}, h('tr', {}, ['Event', 'Status', 'Attempts', 'Last answer', 'Created', admin ? '' : null]
        .filter((t) => t !== null).map((t) => h('th', {scope: 'col'}, t)))),
      h('tbody', {}, deliveries.items.map((delivery) => h('tr', {},
        h('td', {}, delivery.event_type), h('td', {}, status(delivery)),
        h('td', {}, String(delivery.attempts)),
        h('td', {}, delivery.last_status_code ? String(delivery.last_status_code) : (delivery.last_error || '—')),
        h('td', {}, when(delivery.created_at)),
        admin ? h('td', {}, h('button', {type: 'button', 'aria-label': `Redeliver ${delivery.event_type} ${delivery.id}`, onclick: () =>
          act(`/v1/webhooks/${id}/deliveries/${enc(delivery.id)}/redeliver`, 'Redelivery queued.')}, 'Redeliver')) : null)))))
      : h('p', {class: 'sub'}, 'No deliveries yet.'));
}

export async function webhooksView(me) {
  const root = h('div', {});
  async function load() {
    const endpoints = await api('/v1/webhooks?limit=100');
    const cards = await Promise.all(endpoints.items.map((e) => endpointCard(me, e, load)));
    replace(root, h('h1', {}, 'Webhooks'),
      cards.length ? cards : h('p', {class: 'sub'}, 'No webhook endpoints. Register one with POST /v1/webhooks (see the API docs).'));
  }
  await load();
  return root;
}
