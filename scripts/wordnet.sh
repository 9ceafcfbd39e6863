#!/usr/bin/env bash
# Installs WordNet 3.0 for NLTK (METEOR's synonym matching) from Debian packages.
#
# No PyPI wheel ships WordNet and nltk.download() needs GitHub; Debian's wordnet-base and
# wordnet-sense-index hold the same WordNet 3.0 dict files. We unpack them (dpkg -x, nothing is
# installed system-wide) into NLTK's layout:
#
#   ${ATALAIA_NLTK_DATA:-${ATALAIA_CACHE_DIR:-~/.cache/atalaia}/nltk_data}/corpora/wordnet/
#
# and add the `lexnames` file, which NLTK needs and Debian does not ship (it is only printed in the
# lexnames(5WN) manual page). Idempotent: an existing install is only re-verified.
#
# Without apt-get, or when the package lists are stale and we are neither root nor allowed sudo,
# it prints what to do and exits 0: METEOR then falls back to "meteor_exact" (exact + stem matches).
set -euo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")/.."
# NLTK (3.10+) refuses corpus files that another account owns or that are group/world writable,
# so whatever we write must be private to its owner, whatever the caller's umask.
umask 022

# "~" and relative paths as Atalaia's settings read them: home-expanded, relative to the caller.
expand_home() {
  case "$1" in
    "~" | "~/"*) printf '%s\n' "$HOME${1#\~}" ;;
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$CALLER_DIR/$1" ;;
  esac
}
CACHE_DIR=$(expand_home "${ATALAIA_CACHE_DIR:-$HOME/.cache/atalaia}")
NLTK_DATA_DIR=$(expand_home "${ATALAIA_NLTK_DATA:-$CACHE_DIR/nltk_data}")
WN_DIR="$NLTK_DATA_DIR/corpora/wordnet"
PY=${PYTHON:-.venv/bin/python}

# Files NLTK's WordNetCorpusReader opens (its _FILES), all of which must be there.
REQUIRED="cntlist.rev lexnames index.sense index.adj index.adv index.noun index.verb
data.adj data.adv data.noun data.verb adj.exc adv.exc noun.exc verb.exc"

installed() {
  local f
  for f in $REQUIRED; do [ -s "$WN_DIR/$f" ] || return 1; done
}

# Runs a command as root: directly when we are root, else through sudo without a password prompt.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 1
  fi
}

give_up() {
  cat >&2 <<EOF
wordnet: $1
  METEOR will fall back to "meteor_exact" (exact + stem matches, no synonyms).
  To install WordNet by hand, on a machine with Debian's package lists (as root: apt-get update):
    apt-get download wordnet-base wordnet-sense-index
    dpkg -x wordnet-base_*.deb x && dpkg -x wordnet-sense-index_*.deb x
    mkdir -p "$WN_DIR" && cp x/usr/share/wordnet/* "$WN_DIR/"
  then rerun $0 (it adds the lexnames file), or with internet access:
    $PY -c "import nltk; nltk.download('wordnet', download_dir='$NLTK_DATA_DIR')"
EOF
  exit 0
}

write_lexnames() {
  # WordNet 3.0's lexicographer files, as listed in lexnames(5WN): number, name, syntactic
  # category (1 noun, 2 verb, 3 adjective, 4 adverb). NLTK asserts the numbers are 0..44 in order.
  cat >"$1" <<'EOF'
00	adj.all	3
01	adj.pert	3
02	adv.all	4
03	noun.Tops	1
04	noun.act	1
05	noun.animal	1
06	noun.artifact	1
07	noun.attribute	1
08	noun.body	1
09	noun.cognition	1
10	noun.communication	1
11	noun.event	1
12	noun.feeling	1
13	noun.food	1
14	noun.group	1
15	noun.location	1
16	noun.motive	1
17	noun.object	1
18	noun.person	1
19	noun.phenomenon	1
20	noun.plant	1
21	noun.possession	1
22	noun.process	1
23	noun.quantity	1
24	noun.relation	1
25	noun.shape	1
26	noun.state	1
27	noun.substance	1
28	noun.time	1
29	verb.body	2
30	verb.change	2
31	verb.cognition	2
32	verb.communication	2
33	verb.competition	2
34	verb.consumption	2
35	verb.contact	2
36	verb.creation	2
37	verb.emotion	2
38	verb.motion	2
39	verb.perception	2
40	verb.possession	2
41	verb.social	2
42	verb.stative	2
43	verb.weather	2
44	adj.ppl	3
EOF
}

install() {
  command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 || give_up "apt-get/dpkg not found (not Debian/Ubuntu)"
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064  # expand $tmp now: it is local
  trap "rm -rf '$tmp'" EXIT
  # apt's download sandbox user (_apt) must be able to write here, or apt warns.
  chmod 755 "$tmp"
  cd "$tmp"
  # apt-get download needs no root; only refreshing stale package lists does.
  if ! apt-get download -q wordnet-base wordnet-sense-index >download.log 2>&1; then
    echo "wordnet: download failed, refreshing the package lists (apt-get update)" >&2
    as_root apt-get update -qq || give_up "apt-get download failed and apt-get update needs root (or passwordless sudo)"
    apt-get download -q wordnet-base wordnet-sense-index >download.log 2>&1 ||
      { cat download.log >&2; give_up "apt-get download wordnet-base wordnet-sense-index failed"; }
  fi
  for deb in wordnet-base_*.deb wordnet-sense-index_*.deb; do dpkg -x "$deb" x; done
  [ -s x/usr/share/wordnet/data.noun ] || give_up "the packages held no usr/share/wordnet/data.noun"

  # Build next to the target and move it in at the end, so an interrupted run never leaves a
  # folder that looks installed.
  mkdir -p "$(dirname "$WN_DIR")"
  local staging="$WN_DIR.partial.$$"
  rm -rf "$staging"
  mkdir -p "$staging"
  cp x/usr/share/wordnet/* "$staging/"
  write_lexnames "$staging/lexnames"
  [ "$(wc -l <"$staging/lexnames")" = 45 ] || { echo "wordnet: lexnames must have 45 lines" >&2; exit 1; }
  cp x/usr/share/doc/wordnet-base/copyright "$staging/LICENSE" 2>/dev/null || true
  chmod -R go-w "$staging"
  rm -rf "$WN_DIR"
  mv "$staging" "$WN_DIR"
  cd - >/dev/null
  echo "wordnet: installed WordNet 3.0 in $WN_DIR" >&2
}

verify() {
  if [ ! -x "$PY" ]; then
    echo "wordnet: $PY not found; skipping the check (run scripts/setup.sh first)" >&2
    return 0
  fi
  NLTK_DATA_DIR="$NLTK_DATA_DIR" "$PY" - <<'EOF'
import os
import warnings

import nltk

nltk.data.path[:] = [os.environ["NLTK_DATA_DIR"]]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "multilingual functions are not available": no OMW, expected
    from nltk.corpus import wordnet

    version = wordnet.get_version()
    dog = wordnet.synsets("dog")
assert version == "3.0", version
assert dog and dog[0].name() == "dog.n.01", dog[:3]

from nltk.translate.meteor_score import meteor_score

reference = "the cat sat on the carpet".split()
hypothesis = "the cat sat on the rug".split()
with_wordnet = meteor_score([reference], hypothesis, wordnet=wordnet)


class _NoSynonyms:
    def synsets(self, word):
        return []


exact = meteor_score([reference], hypothesis, wordnet=_NoSynonyms())
identical = meteor_score([reference], reference, wordnet=wordnet)
# "rug" and "carpet" share a synset, so WordNet must add a match that exact+stem cannot.
assert 0.9 < with_wordnet <= 1.0 and exact < with_wordnet and identical > 0.99, (with_wordnet, exact, identical)
print(f"wordnet: ok (WordNet {version}; METEOR rug/carpet {with_wordnet:.3f} vs exact-only {exact:.3f})")
EOF
}

if installed; then
  echo "wordnet: already installed in $WN_DIR" >&2
elif [ -s "$WN_DIR/data.noun" ] && [ ! -e "$WN_DIR/lexnames" ]; then
  # Dict files copied by hand (see give_up): only lexnames is missing.
  write_lexnames "$WN_DIR/lexnames"
  chmod -R go-w "$WN_DIR"
  installed || { echo "wordnet: $WN_DIR is incomplete; remove it and rerun $0" >&2; exit 1; }
  echo "wordnet: added lexnames to $WN_DIR" >&2
else
  install
fi
verify
