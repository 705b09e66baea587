#!/usr/bin/env node
// Writes tests/data/tokenizer_vectors.jsonl: strings and the GPT-2 token ids
// that the JavaScript reference encoder (npm gpt-3-encoder 1.1.4, a port of
// OpenAI's encoder.py) gives them. tests/test_tokenizer.cpp checks that our
// tokenizer produces exactly these ids.
//
// Rerun (needs Node.js and the npm registry; keep the package out of the repo):
//   mkdir -p /tmp/vec && cd /tmp/vec && npm init -y && npm install gpt-3-encoder@1.1.4
//   cd - && NODE_PATH=/tmp/vec/node_modules node tools/make-tokenizer-vectors.js > tests/data/tokenizer_vectors.jsonl
//
// One JSON object per line, {"text": "...", "ids": [...]}, with every non-ASCII
// character written as a \uXXXX escape so the file is plain ASCII. Only valid
// Unicode strings can be given to the reference (it takes JS strings), so
// invalid UTF-8 is tested by round trip in the C++ test instead. The reference
// treats "<|endoftext|>" as ordinary text, as our encode does by default.
'use strict';
const { encode } = require('gpt-3-encoder');

const cases = [];
const add = (s) => cases.push(s);

// Edge cases and whitespace.
[
  '', ' ', '  ', '   ', '\n', '\n\n', '\n\n\n', '\t', '\t\t', '\r\n', ' \n', '\n ', ' \t\n ', 'a', 'A', '0', '.',
  'hello', ' hello', 'hello ', 'hello  ', 'hello   world', 'hello\tworld', 'hello\nworld', 'hello \nworld',
  'hello\n\nworld', 'hello \n\n world', 'trailing spaces   ', 'trailing newline\n', 'trailing newlines\n\n\n',
  '   leading spaces', '\n\nleading newlines', 'tabs\t\tbetween\t\twords', 'mixed \t \n \r\n whitespace',
  'a b  c   d    e     f', '        indented by eight', '\t\t\tindented by tabs', 'x\u00a0y', 'x\u3000y',
  'end with tab\t', 'space before punctuation .', ' ! ? , ;', '\v\f form and vertical feed',
].forEach(add);

// Contractions, in every case (GPT-2's regex is case-sensitive).
[
  "it's", "It's", "IT'S", "don't", "DON'T", "Don't", "we're", "WE'RE", "they've", "THEY'VE", "I'm", "I'M",
  "you'll", "YOU'LL", "he'd", "HE'D", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'x",
  "John's book isn't here, and we'd've gone", "rock 'n' roll", "''quoted''", "'tis the season", "o'clock",
  "ma'am", "y'all're", "can't won't shan't", "'''", "l'homme d'affaires", "'s's's", " 's", " 'S",
].forEach(add);

// Digits and numbers.
[
  '0', '1', '12', '123', '1234', '12345', '123456789', '3.14159', '2,718', '1,000,000', '-42', '+7', '1e10',
  '0x1F', '2024-05-20', '12:30:45', '$100.00', '50%', '1st 2nd 3rd 4th', 'version 1.2.3', 'v2', 'abc123def',
  '123abc', ' 42', '  42', 'phone: +1 (555) 123-4567', '\u0661\u0662\u0663', '\u0967\u0968\u0969', '\u00bd \u00b2',
  '\u2160\u2161\u2162', '3\u00a0000', '9'.repeat(50),
].forEach(add);

// Punctuation runs.
[
  '!!!', '???', '...', '\u2026', '?!?!', '---', '--', '***', '###', '@@@', '(((', ')))', '[]{}()<>', '!@#$%^&*()',
  ',,', ',,,', ',,,,', ',,,,,', ', , ,', '.,.,', ';;', '::', '//', '////', '\\\\', '""', '"""', "''", '``', '~~~',
  '==', '===', '!==', '=>', '->', '<-', '<=>', '||', '&&', '::=', ':-)', ';-)', '(-_-)', '\u00a1Hola!', '\u00bfQu\u00e9?',
  '\u201cquoted\u201d', '\u2018single\u2019', '\u2014 em dash \u2013 en dash', '\u00ab guillemets \u00bb',
  'end.', 'end!', 'Mr. Smith', 'e.g. i.e. etc.', 'a-b_c.d/e\\f', '#hashtag @mention', 'user@example.com',
  'https://example.com/path?query=1&x=y#frag', '<b>bold</b>', '<!-- comment -->',
].forEach(add);

// The special token's text is ordinary text here.
[
  '<|endoftext|>', 'hello<|endoftext|>world', ' <|endoftext|> ', '<|endoftext|><|endoftext|>',
  'text <|endoftext|>\n\nnext document', '<|endoftext', 'endoftext|>', '<|ENDOFTEXT|>', '<|endoftext|>x',
].forEach(add);

// English prose.
[
  'The quick brown fox jumps over the lazy dog.',
  'It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.',
  'Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014having little or no money in my purse,',
  'In 1969, Apollo 11 landed on the Moon; Neil Armstrong said: "That\'s one small step for [a] man."',
  'GPT-2 is a large transformer-based language model with 1.5 billion parameters, trained on WebText.',
  'Dear Sir or Madam,\n\nI am writing to inquire about the position advertised on 3 March.\n\nYours faithfully,\nA. N. Other\n',
  'Q: What is 2 + 2?\nA: 4.\n\nQ: Why?\nA: Because.',
  'UPPERCASE TEXT SHOUTS LOUDLY. lowercase text whispers. MiXeD cAsE iS aNnOyInG.',
  'Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis',
  'The word "tokenization" is tokenized into sub-word units; rare words split into more pieces than common ones.',
  ' The', ' the', 'the', 'The', ' THE', 'Hello, World!', 'Hello,World!', 'hello world', 'Hello World',
  '    def __init__(self):', 'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.',
  '1. First item\n2. Second item\n   - nested bullet\n   - another\n3. Third',
  '| col 1 | col 2 |\n|-------|-------|\n| a     | b     |',
  '# Heading\n\n## Subheading\n\nSome *emphasis* and **strong** text with `code`.',
].forEach(add);

// Code in several languages.
[
  '#include <stdio.h>\n\nint main(void) {\n    printf("hello, world\\n");\n    return 0;\n}\n',
  'def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n',
  'for (let i = 0; i < arr.length; i++) { console.log(`${i}: ${arr[i]}`); }',
  'fn main() {\n    let v: Vec<i32> = (0..10).map(|x| x * x).collect();\n    println!("{:?}", v);\n}',
  'SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;',
  '#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo "$f"; done\n',
  'template <typename T>\nstd::vector<T> f(const std::vector<T>& x) { return {x.rbegin(), x.rend()}; }',
  'public static void main(String[] args) {\n\tSystem.out.println("Hi");\n}',
  'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hi")\n}\n',
  '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
  '<html>\n  <body>\n    <p class="x">Text</p>\n  </body>\n</html>',
  'x = lambda a, *args, **kwargs: a if a else None  # comment',
  'if (x != 0 && y == 1 || !z) { x <<= 2; y >>= 1; z ^= 0xFF; }',
  '\\documentclass{article}\n\\begin{document}\n$E = mc^2$ and $\\int_0^1 x\\,dx$\n\\end{document}',
  'matrix = [[1, 2], [3, 4]]\nprint(matrix[0][1])',
  '    \n    \n',
  'a = 1;\r\nb = 2;\r\n',
].forEach(add);

// Other scripts, accents, emoji.
[
  'caf\u00e9', 'na\u00efve r\u00e9sum\u00e9', 'Se\u00f1or Pe\u00f1a', '\u00c5ngstr\u00f6m', 'stra\u00dfe STRASSE',
  'cafe\u0301 (combining accent)', '\u0141\u00f3d\u017a', '\u010cesk\u00fd Krumlov', 'Ti\u1ebfng Vi\u1ec7t',
  '\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac', '\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u044f\u0437\u044b\u043a',
  '\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002', '\u4e2d\u6587\u5b57\u7b26', '\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8',
  '\u0627\u0644\u0639\u0631\u0628\u064a\u0629', '\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645',
  '\u0939\u093f\u0928\u094d\u0926\u0940', '\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e',
  '\u05e2\u05d1\u05e8\u05d9\u05ea', '\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22', '\u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8',
  '\u1200\u1208\u1218', '\u0d2e\u0d32\u0d2f\u0d3e\u0d33\u0d02', '\ud83d\ude00', '\ud83d\ude00\ud83d\ude00\ud83d\ude00',
  'I love it \u2764\ufe0f', '\ud83d\udc4d\ud83c\udffd', '\ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67\u200d\ud83d\udc66',
  '\ud83c\uddfa\ud83c\uddf8 \ud83c\uddef\ud83c\uddf5', '\ud83c\udff3\ufe0f\u200d\ud83c\udf08', '\ud83e\udd14 thinking',
  'emoji\ud83d\ude80rocket', ' \ud83d\ude80', '\u2603 \u2602 \u263a', '\u00a9 \u00ae \u2122', '\u20ac100 \u00a350 \u00a520',
  '\u2200x\u2208\u211d: x\u00b2 \u2265 0', '\u03b1\u03b2\u03b3 + \u03b4 = \u03b5', '\ud835\udc00\ud835\udc01\ud835\udc02',
  '\u00e0\u00e1\u00e2\u00e3\u00e4\u00e5\u00e6\u00e7\u00e8\u00e9\u00ea\u00eb', 'Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dalgo',
  '\u4f60\u597d\uff0c\u4e16\u754c\uff01', '\u3053\u3093\u306b\u3061\u306f\u3001\u4e16\u754c\u3002', 'mixed \u4e2d\u6587 and English',
  '\u0000', 'a\u0000b', '\u0001\u0002\u0003', '\u007f', '\u0080\u0081', '\u00ad', '\ufffd', '\uffff', '\ud800\udc00',
  '\udbff\udfff', '\u200b', 'zero\u200bwidth', '\u2028line sep', '\u2029para sep',
].forEach(add);

// Long words and runs.
[
  'a'.repeat(100), 'ab'.repeat(100), 'abc'.repeat(77), 'x'.repeat(1000), ' '.repeat(100), '\n'.repeat(50),
  '!'.repeat(200), '-'.repeat(120), '='.repeat(80), '\u00e9'.repeat(60), '\u4e2d'.repeat(70), 'Hello'.repeat(40),
  'Pneumonoultramicroscopicsilicovolcanoconiosis'.repeat(5), 'aaaa bbbb '.repeat(30), '0123456789'.repeat(20),
  'The quick brown fox '.repeat(25), 'thequickbrownfoxjumpsoverthelazydog'.repeat(8), '\ud83d\ude00'.repeat(30),
  'ZmFzdGVyIHRoYW4gYSBzcGVlZGluZyBidWxsZXQ=' + 'QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo'.repeat(6),
].forEach(add);

// Pseudo-random mixtures of the fragments above (seeded, reproducible).
let seed = 12345;
const rnd = (n) => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed % n;
};
const frags = [
  ' ', '  ', '\n', '\t', 'the', ' the', 'The', "'s", "'S", "n't", ' 12', '3', '...', '!', ',', ' ,', 'caf\u00e9',
  '\u4e2d\u6587', '\ud83d\ude00', '\u200d', '\ufe0f', '\u0627\u0644', '\u0939\u093f', 'x', 'Q', ' (', ')', '"', "'",
  '<|endoftext|>', '\r\n', 'code()', '{', '}', ';', '_', '-', 'foo_bar', '0x', '\u00a0', 'ing', ' un', 'believ', 'able',
];
for (let k = 0; k < 200; k++) {
  let s = '';
  const parts = 1 + rnd(12);
  for (let p = 0; p < parts; p++) s += frags[rnd(frags.length)];
  add(s);
}

// Long single words (50 to 400 letters): our tokenizer merges pieces this
// long with a heap instead of GPT-2's quadratic loop, so pin them here.
const syllables = ['an', 'the', 'ing', 'tion', 'ab', 'qu', 'x', 'str', 'e', 'o', 'ly', 'ment', 'pre', 'z', 'ou', 'ck'];
for (let k = 0; k < 40; k++) {
  let s = k % 2 ? ' ' : '';
  const target = 50 + rnd(350);
  while (s.length < target) s += syllables[rnd(syllables.length)];
  add(k % 3 ? s : s.toUpperCase());
}

const ascii = (s) => JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
const seen = new Set();
for (const text of cases) {
  if (seen.has(text)) continue;
  seen.add(text);
  process.stdout.write(`{"text": ${ascii(text)}, "ids": ${JSON.stringify(encode(text))}}\n`);
}
