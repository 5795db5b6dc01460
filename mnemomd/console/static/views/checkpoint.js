// One checkpoint: its verdict and concerns, and its certificate (download and verify).
import {api, enc} from '../api.js';
import {errorBox, h, jsonBlock, replace} from '../dom.js';
import {checkpointItem} from './agent.js';

export async function checkpointView(me, checkpointId) {
  const checkpoint = await api(`/v1/checkpoints/${enc(checkpointId)}`);
  const result = h('div', {class: 'message', 'aria-live': 'polite'});
  const certificateUrl = `/v1/checkpoints/${enc(checkpoint.id)}/certificate`;
  async function verify() {
    replace(result, 'Verifying…');
    try {
      const certificate = await api(certificateUrl);
      const answer = await api('/v1/verify', {method: 'POST', body: {certificate}});
      replace(result,
        h('p', {class: answer.valid ? 'ok' : 'bad', 'data-testid': 'verification'},
          answer.valid ? '✓ certificate valid' : '✗ certificate NOT valid', ' — ', answer.details),
        jsonBlock(answer.checks));
    } catch (error) {
      replace(result, errorBox(error));
    }
  }
  return h('div', {},
    h('p', {}, h('a', {href: `#/agents/${enc(checkpoint.agent_id)}`}, '← Agent ', checkpoint.agent_id)),
    h('h1', {}, 'Checkpoint ', checkpoint.id),
    h('section', {class: 'card'}, checkpointItem(checkpoint)),
    h('section', {class: 'card'}, h('h2', {}, 'Certificate'),
      h('p', {}, h('a', {href: certificateUrl, download: `certificate-${checkpoint.id}.json`}, 'Download certificate (JSON)'),
        ' ', h('button', {type: 'button', onclick: verify}, 'Verify against this gateway\'s keys')),
      result),
    h('section', {class: 'card'}, h('h2', {}, 'Details'), jsonBlock({
      session_id: checkpoint.session_id, thinking_block_hash: checkpoint.thinking_block_hash,
      window_position: checkpoint.window_position, analysis_metadata: checkpoint.analysis_metadata,
      conscience_context: checkpoint.conscience_context, trace_id: checkpoint.trace_id})));
}
