// Hand-made SVG charts: a verdict sparkline and an integrity-over-time chart.
import {s} from './dom.js';

const HEIGHT = {clear: 4, review_needed: 9, boundary_violation: 14};

/** One bar per verdict, oldest left; the height says the verdict as much as the colour. */
export function sparkline(verdicts) {
  const width = Math.max(verdicts.length * 5, 5);
  const bars = verdicts.map((verdict, index) => s('rect', {
    x: index * 5, y: 16 - (HEIGHT[verdict] || 2), width: 4, height: HEIGHT[verdict] || 2,
    class: `bar v-${verdict}`,
  }, s('title', {}, verdict)));
  return s('svg', {class: 'spark', viewBox: `0 0 ${width} 16`, width, height: 16,
    role: 'img', 'aria-label': `last ${verdicts.length} verdicts`}, bars);
}

/** The share of clear checks so far, after each checkpoint (oldest first). */
export function runningRatios(checkpoints) {
  let clear = 0;
  return checkpoints.map((checkpoint, index) => {
    if (checkpoint.verdict === 'clear') clear += 1;
    return clear / (index + 1);
  });
}

const W = 640, H = 210, PAD = 36, LEFT = 48;
const MARK = {clear: 'circle', review_needed: 'rect', boundary_violation: 'path'};

function mark(verdict, x, y) {
  const kind = MARK[verdict] || 'circle';
  const attrs = {class: `point v-${verdict}`, 'data-verdict': verdict};
  if (kind === 'circle') return s('circle', {...attrs, cx: x, cy: y, r: 4});
  if (kind === 'rect') return s('rect', {...attrs, x: x - 4, y: y - 4, width: 8, height: 8});
  return s('path', {...attrs, d: `M${x - 4} ${y - 4}L${x + 4} ${y + 4}M${x + 4} ${y - 4}L${x - 4} ${y + 4}`});
}

/** Integrity ratio over time: a line through one mark per checkpoint, shaped by verdict. */
export function ratioChart(checkpoints) {
  const ordered = [...checkpoints].sort((a, b) => a.created_at - b.created_at);
  const ratios = runningRatios(ordered);
  const first = ordered.length ? ordered[0].created_at : 0;
  const last = ordered.length ? ordered[ordered.length - 1].created_at : 1;
  const span = Math.max(last - first, 1);
  const xOf = (index) => ordered.length === 1 ? (LEFT + W - PAD) / 2
    : LEFT + (ordered[index].created_at - first) / span * (W - LEFT - PAD);
  const yOf = (ratio) => H - PAD - ratio * (H - 2 * PAD);
  const points = ordered.map((checkpoint, index) => [xOf(index), yOf(ratios[index])]);
  const grid = [0, 0.5, 1].map((ratio) => [
    s('line', {class: 'grid', x1: LEFT, x2: W - PAD, y1: yOf(ratio), y2: yOf(ratio)}),
    s('text', {class: 'axis', x: LEFT - 8, y: yOf(ratio) + 4, 'text-anchor': 'end'}, `${ratio * 100}%`),
  ]);
  const stamp = (ms) => new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
  const times = ordered.length ? [
    s('text', {class: 'axis', x: LEFT, y: H - PAD + 22}, stamp(first)),
    ordered.length > 1 ? s('text', {class: 'axis', x: W - PAD, y: H - PAD + 22, 'text-anchor': 'end'}, `${stamp(last)} UTC`) : null,
  ] : [];
  const marks = ordered.map((checkpoint, index) => {
    const [x, y] = points[index];
    const m = mark(checkpoint.verdict, x, y);
    m.appendChild(s('title', {}, `${checkpoint.verdict} — ratio ${(ratios[index] * 100).toFixed(1)}%`));
    return m;
  });
  return s('svg', {class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
    'data-points': ordered.length,
    'aria-label': `integrity ratio over ${ordered.length} checkpoints`},
  grid, times,
  ordered.length > 1 ? s('polyline', {class: 'line', points: points.map((p) => p.join(',')).join(' ')}) : null,
  marks);
}
