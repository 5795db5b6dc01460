// The only way the console talks to anything: fetches to this daemon's /v1 API.

const TOKEN_KEY = 'mnemomd.console.token';

export const session = {
  token() { return sessionStorage.getItem(TOKEN_KEY); },
  set(token) { sessionStorage.setItem(TOKEN_KEY, token); },
  clear() { sessionStorage.removeItem(TOKEN_KEY); },
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const enc = encodeURIComponent;

/** Call the API; the answer's JSON, or an ApiError carrying the API's own message. */
export async function api(path, {method = 'GET', body, token} = {}) {
  if (!path.startsWith('/v1/')) throw new Error(`not an API path: ${path}`);
  const headers = {accept: 'application/json'};
  const bearer = token || session.token();
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store', credentials: 'omit', redirect: 'error',
    });
  } catch (error) {
    throw new ApiError(0, `The daemon did not answer (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const message = data && typeof data.error === 'string' ? data.error
      : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, `${method} ${path.split('?')[0]}: ${message}`);
  }
  return data;
}

/** Plain text from the front door (/metrics, /health/ready), not the API. */
export async function plain(path) {
  const response = await fetch(path, {cache: 'no-store', credentials: 'omit'});
  return {status: response.status, text: await response.text()};
}

const RANK = {viewer: 0, admin: 1, owner: 2};

/** Whether the signed-in role reaches `required`. */
export function may(me, required) {
  return !!me && (RANK[me.role] ?? -1) >= RANK[required];
}
