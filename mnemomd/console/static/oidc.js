// "Sign in with <issuer>": the authorization code flow with PKCE, as a public client.

const FLOW_KEY = 'mnemomd.console.oidc';

function base64url(bytes) {
  let text = '';
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function randomString() {
  return base64url(crypto.getRandomValues(new Uint8Array(32)));
}

async function challenge(verifier) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

function redirectUri() {
  return `${location.origin}/console/`;
}

async function discover(issuer) {
  const response = await fetch(`${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`,
    {credentials: 'omit', cache: 'no-store'});
  if (!response.ok) throw new Error(`the identity provider answered ${response.status}`);
  const document = await response.json();
  if (String(document.issuer).replace(/\/$/, '') !== issuer.replace(/\/$/, '')) {
    throw new Error('the identity provider names another issuer');
  }
  return document;
}

/** Go to the identity provider; it comes back to /console/?code=…&state=… */
export async function startSignIn(config) {
  if (!crypto.subtle) throw new Error('sign-in needs https (or a loopback address)');
  const document = await discover(config.oidc_issuer);
  const verifier = randomString();
  const state = randomString();
  sessionStorage.setItem(FLOW_KEY, JSON.stringify({verifier, state,
    token_endpoint: document.token_endpoint}));
  const url = new URL(document.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code', client_id: config.oidc_client_id, redirect_uri: redirectUri(),
    scope: 'openid profile', state, code_challenge: await challenge(verifier),
    code_challenge_method: 'S256',
  }).toString();
  location.assign(url.toString());
}

/** On the way back: the tokens for the code (id token first), or null if not returning. */
export async function finishSignIn(config) {
  const params = new URLSearchParams(location.search);
  if (!params.has('code') && !params.has('error')) return null;
  history.replaceState(null, '', `${location.pathname}${location.hash || '#/agents'}`);
  const flow = JSON.parse(sessionStorage.getItem(FLOW_KEY) || 'null');
  sessionStorage.removeItem(FLOW_KEY);
  if (params.has('error')) throw new Error(`the identity provider refused: ${params.get('error')}`);
  if (!flow || flow.state !== params.get('state')) throw new Error('sign-in state does not match; try again');
  const tokenUrl = new URL(flow.token_endpoint);
  if (tokenUrl.origin !== new URL(config.oidc_issuer).origin) {
    throw new Error('the token endpoint is not on the issuer\'s origin');
  }
  const response = await fetch(tokenUrl.toString(), {
    method: 'POST', credentials: 'omit', cache: 'no-store',
    headers: {'content-type': 'application/x-www-form-urlencoded'},
    body: new URLSearchParams({grant_type: 'authorization_code', code: params.get('code'),
      redirect_uri: redirectUri(), client_id: config.oidc_client_id,
      code_verifier: flow.verifier}).toString(),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`token exchange failed: ${answer.error || response.status}`);
  return [answer.id_token, answer.access_token].filter((token) => typeof token === 'string');
}
