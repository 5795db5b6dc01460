// Building the page: every piece of data becomes a text node, never markup.

const REFUSED = new Set(['innerhtml', 'outerhtml', 'srcdoc', 'style']);
const SVG_NS = 'http://www.w3.org/2000/svg';

function setAttributes(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    const lower = name.toLowerCase();
    if (REFUSED.has(lower)) throw new Error(`dom.h refuses the ${name} attribute`);
    if (lower.startsWith('on')) {
      if (typeof value !== 'function') throw new Error(`dom.h refuses a string ${name}`);
      el.addEventListener(lower.slice(2), value);
      continue;
    }
    const text = String(value);
    if ((lower === 'href' || lower === 'src') && /^\s*(javascript|data|vbscript):/i.test(text)) {
      throw new Error(`dom.h refuses a ${name} with a script scheme`);
    }
    if (lower === 'class') el.setAttribute('class', text);
    else el.setAttribute(name, value === true ? '' : text);
  }
}

/** Append children: nodes as they are, anything else as text. */
export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** h('p', {class: 'x'}, 'text', otherNode): an element whose text is text nodes only. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttributes(el, attrs);
  return append(el, children);
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttributes(el, attrs);
  return append(el, children);
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function when(ms) {
  if (ms === null || ms === undefined) return '—';
  const date = new Date(ms);
  return date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

export function ago(ms, now = Date.now()) {
  if (ms === null || ms === undefined) return 'never';
  const seconds = Math.max(0, Math.round((now - ms) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86400)}d ago`;
}

export function percent(ratio) {
  return typeof ratio === 'number' ? `${(ratio * 100).toFixed(1)}%` : '—';
}

const VERDICT_LABELS = {
  clear: ['✓', 'clear'],
  review_needed: ['!', 'review needed'],
  boundary_violation: ['✗', 'violation'],
};

/** A verdict as icon + words + colour: never colour alone. */
export function verdict(value) {
  if (!value) return h('span', {class: 'verdict v-none'}, '— no checks');
  const [icon, words] = VERDICT_LABELS[value] || ['?', value];
  return h('span', {class: `verdict v-${value in VERDICT_LABELS ? value : 'other'}`},
    h('span', {'aria-hidden': 'true'}, icon), ' ', words);
}

const STATUS_ICONS = {active: '●', paused: '⏸', killed: '■'};

export function containment(status) {
  return h('span', {class: `state s-${status in STATUS_ICONS ? status : 'other'}`},
    h('span', {'aria-hidden': 'true'}, STATUS_ICONS[status] || '?'), ' ', status);
}

/** JSON shown as text in a <pre> (cards, policies, alert details). */
export function jsonBlock(value) {
  return h('pre', {class: 'json'}, JSON.stringify(value, null, 2));
}

export function errorBox(error) {
  return h('p', {class: 'error', role: 'alert'}, h('strong', {}, 'Error: '), String(error.message || error));
}
