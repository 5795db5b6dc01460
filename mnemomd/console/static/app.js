// The console's shell: sign-in, the header, and hash routing to one module per view.
import {api, ApiError, session} from './api.js';
import {errorBox, h, replace} from './dom.js';
import {finishSignIn, startSignIn} from './oidc.js';
import {agentsView} from './views/agents.js';
import {agentView} from './views/agent.js';
import {checkpointView} from './views/checkpoint.js';
import {deploymentView} from './views/deployment.js';
import {webhooksView} from './views/webhooks.js';

const state = {me: null, config: {oidc_issuer: null, oidc_client_id: null}, stop: null};

const ROUTES = [
  [/^#\/agents\/([^/]+)$/, (m) => agentView(state.me, decodeURIComponent(m[1]))],
  [/^#\/checkpoints\/([^/]+)$/, (m) => checkpointView(state.me, decodeURIComponent(m[1]))],
  [/^#\/webhooks$/, () => webhooksView(state.me)],
  [/^#\/deployment$/, () => deploymentView(state.me)],
  [/^#\/agents$/, () => agentsView(state.me)],
];

function header() {
  const top = document.getElementById('top');
  const links = [['#/agents', 'Agents'], ['#/webhooks', 'Webhooks'], ['#/deployment', 'Deployment']];
  const current = location.hash.split('/').slice(0, 2).join('/');
  replace(top,
    h('span', {class: 'brand'}, 'mnemomd'),
    state.me ? h('nav', {'aria-label': 'Views'}, links.map(([href, text]) =>
      h('a', {href, 'aria-current': current === href ? 'page' : null}, text))) : null,
    state.me ? h('span', {class: 'who', 'data-testid': 'who'},
      `${state.me.name} (${state.me.role})`, ' ',
      h('button', {type: 'button', class: 'link', onclick: signOut}, 'Sign out')) : null);
}

function signOut() {
  session.clear();
  state.me = null;
  location.hash = '#/agents';
  render();
}

let navigation = 0;

async function route() {
  const main = document.getElementById('main');
  const ticket = ++navigation;  // a view still loading when the next is asked for is dropped
  if (state.stop) { state.stop(); state.stop = null; }
  header();
  const notice = document.getElementById('notice');
  if (notice) notice.remove();
  if (!state.me) { replace(main, signInView()); return; }
  if (state.me.name === 'local') {
    main.before(h('p', {id: 'notice', class: 'notice', role: 'status'},
      'No API credential is configured: the API serves programs on this host only, so this ',
      'console can read but its controls are refused. Set INTERNAL_API_KEY, MNEMOM_JWT_SECRET ',
      'or MNEMOM_OIDC_ISSUER and sign in with a token.'));
  }
  const hash = location.hash || '#/agents';
  for (const [pattern, make] of ROUTES) {
    const found = hash.match(pattern);
    if (found) {
      replace(main, h('p', {class: 'loading'}, 'Loading…'));
      try {
        const view = await make(found);
        if (ticket !== navigation) {
          if (typeof view.stop === 'function') view.stop();
          return;
        }
        if (typeof view.stop === 'function') state.stop = view.stop;
        replace(main, view.node || view);
      } catch (error) {
        if (ticket !== navigation) return;
        if (error instanceof ApiError && error.status === 401) { signOut(); return; }
        replace(main, errorBox(error));
      }
      return;
    }
  }
  replace(main, h('p', {}, 'No such view. ', h('a', {href: '#/agents'}, 'Go to the agents')));
}

async function signInWith(tokens) {
  let lastError = null;
  for (const token of tokens) {
    try {
      state.me = await api('/v1/me', {token});
      session.set(token);
      return;
    } catch (error) { lastError = error; }
  }
  throw lastError || new Error('no token');
}

function signInView() {
  const message = h('div', {class: 'message', 'aria-live': 'polite'});
  const input = h('input', {id: 'token', type: 'password', autocomplete: 'off', required: true,
    'aria-describedby': 'token-help'});
  const form = h('form', {class: 'signin', onsubmit: async (event) => {
    event.preventDefault();
    replace(message);
    try {
      await signInWith([input.value.trim()]);
      input.value = '';
      render();
    } catch (error) { replace(message, errorBox(error)); }
  }},
  h('h1', {}, 'Sign in'),
  h('label', {for: 'token'}, 'API token'), input,
  h('p', {id: 'token-help', class: 'help'},
    'An INTERNAL_API_KEY, a JWT signed with MNEMOM_JWT_SECRET, or your identity provider\'s token. ',
    'It is kept in this tab only and forgotten when the tab closes.'),
  h('button', {type: 'submit'}, 'Sign in with token'));
  const oidc = state.config.oidc_issuer && state.config.oidc_client_id
    ? h('div', {class: 'oidc'}, h('button', {type: 'button', 'data-testid': 'oidc-signin',
      onclick: () => startSignIn(state.config).catch((error) => replace(message, errorBox(error)))},
    `Sign in with ${new URL(state.config.oidc_issuer).host}`))
    : null;
  return h('section', {class: 'card narrow'}, oidc, form, message);
}

async function render() {
  await route();
}

async function boot() {
  const main = document.getElementById('main');
  // The skip link must not change the hash: the hash is the route.
  document.querySelector('.skip').addEventListener('click', (event) => {
    event.preventDefault();
    main.focus();
  });
  try {
    state.config = await api('/v1/console/config');
  } catch (error) {
    replace(main, errorBox(error));
    return;
  }
  window.addEventListener('hashchange', route);
  let failure = null;
  try {
    const tokens = await finishSignIn(state.config);
    if (tokens) await signInWith(tokens);
  } catch (error) {
    failure = error;
  }
  if (!state.me && session.token()) {
    try { state.me = await api('/v1/me'); } catch { session.clear(); }
  }
  if (!location.hash) history.replaceState(null, '', '#/agents');
  await route();
  if (failure) main.appendChild(errorBox(failure));
}

boot();
