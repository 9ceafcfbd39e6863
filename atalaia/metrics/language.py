"""Which language a text is in: a small, offline, deterministic detector for Latin-script text.

Text metrics need it to choose a stemmer (Portuguese words through an English stemmer match
badly), and toxicity needs it to know whether its model covers the text at all. No model file and
no package: each language is scored by how many of the text's words are among its most frequent
function words (articles, prepositions, pronouns, auxiliaries), plus the letters only it uses
(``ã``/``õ``/``ç`` for Portuguese, ``ñ`` for Spanish, ``ß`` for German, ...). Function words are
most of any sentence, so one short answer is usually enough; a text with no evidence, or a tie, is
``"und"`` (undetermined), and callers fall back to a configured language.

Packages considered: ``py3langid``/``langid``, ``langdetect``, ``lingua-language-detector`` and
``pycld2`` ship their models offline and cover far more languages; ``fasttext-langdetect``
downloads its model at run time. None was added: the metrics only need the languages a Snowball
stemmer exists for, and a 60-line detector costs microseconds per event and no dependency.

Examples
--------
>>> detect_language("Não é permitido levar o portátil para casa.")
'pt'
>>> detect_language("You may not take the laptop home.")
'en'
>>> detect_language("No se permite llevar el portátil a casa.")
'es'
>>> detect_language("42")
'und'
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "LANGUAGES",
    "TOXICITY_LANGUAGES",
    "UNDETERMINED",
    "detect_language",
    "toxicity_languages",
    "uncovered_language",
    "words",
]

UNDETERMINED = "und"

# The most frequent function words of each language (Snowball/NLTK stopword lists, trimmed to
# words that are short, frequent and, where possible, not words of the other languages here).
_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the a an and or of to in on at for with by from is are was were be been has have had do does "
        "did not no it its this that these those you your we our they their he she his her i my me "
        "what which who when where how can may must should will would if than then there as about".split()
    ),
    "pt": frozenset(
        "o os a as um uma uns umas e é são de do da dos das no na nos nas ao aos à às em para por pelo "
        "pela com sem não que se mais como mas ou já também foi ser está estão tem têm há isso isto "
        "ele ela eles elas você vocês seu sua seus suas meu minha nosso nossa deve pode quando onde "
        "até depois antes cada muito".split()
    ),
    "es": frozenset(
        "el la los las un una unos unas y o a de es son del al en por para con sin no que se más como pero "
        "ya también fue ser está están tiene hay eso esto él ella ellos ellas usted su sus mi nuestro "
        "debe puede cuando donde hasta después antes cada muy".split()
    ),
    "fr": frozenset(
        "le la les un une des et ou est sont du de au aux en dans par pour avec sans ne pas que qui se "
        "plus comme mais déjà aussi été être il elle ils elles vous nous son sa ses mon ma notre doit "
        "peut quand où après avant chaque très".split()
    ),
    "de": frozenset(
        "der die das den dem des ein eine einen einem und oder ist sind war nicht kein zu im in mit "
        "von für auf bei aus wie aber auch sich sie er es wir ihr sein ihre muss kann wenn wo nach vor "
        "jede sehr".split()
    ),
    "it": frozenset(
        "il lo la i gli le un una uno e è sono del della dei delle al alla in per con senza non che "
        "si più come ma già anche stato essere lui lei loro voi noi suo sua deve può quando dove "
        "dopo prima ogni molto".split()
    ),
    "nl": frozenset(
        "de het een en of is zijn was niet geen te in op met van voor bij uit als maar ook zich zij "
        "hij wij jullie hun mijn moet kan wanneer waar na elk zeer".split()
    ),
}

#: Languages the detector knows (ISO 639-1 codes).
LANGUAGES: tuple[str, ...] = tuple(_STOPWORDS)

# Letters (after lower-casing) that only some of the languages above write: each occurrence is
# one point of evidence, like a function word.
_LETTERS: dict[str, str] = {"ã": "pt", "õ": "pt", "ç": "pt fr", "ñ": "es", "ß": "de", "è": "fr it", "ê": "pt fr"}

# Word -> the languages it is a function word of: one dict lookup per token.
_LANGS_OF: dict[str, tuple[str, ...]] = {}
for _lang, _stop in _STOPWORDS.items():
    for _word in _stop:
        _LANGS_OF[_word] = (*_LANGS_OF.get(_word, ()), _lang)

_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|[\u0300-\u036f])*")

# Longer texts are capped: the first 200 words decide as well as 2,000 and cost a tenth.
_MAX_WORDS = 200


def words(text: str) -> list[str]:
    """Lower-cased words of letters only (no digits), NFC-normalised so ``n + ~`` equals ``ñ``.

    >>> words("Não É 2 vezes")
    ['não', 'é', 'vezes']
    """
    return _WORD.findall(unicodedata.normalize("NFC", text.lower()))


def detect_language(text: str, *, min_evidence: int = 1) -> str:
    """ISO 639-1 code of the language ``text`` is most likely in, or ``"und"``.

    Parameters
    ----------
    text
        Any text; only its first 200 words are read.
    min_evidence
        Points (function words plus distinctive letters) the winner needs; below it, ``"und"``.

    Returns
    -------
    str
        One of :data:`LANGUAGES`, or ``"und"`` when nothing points to one, or two languages tie.
    """
    tokens = words(text)[:_MAX_WORDS]
    scores = dict.fromkeys(_STOPWORDS, 0.0)
    for token in tokens:
        for lang in _LANGS_OF.get(token, ()):
            scores[lang] += 1.0
    joined = " ".join(tokens)
    for letter, langs in _LETTERS.items():
        n = joined.count(letter)
        if n:
            for lang in langs.split():
                # Half a point per occurrence: a letter breaks ties between related languages, it
                # does not outvote their function words.
                scores[lang] += 0.5 * n
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    (best, top), (_, second) = ranked[0], ranked[1]
    if top < min_evidence or top == second:
        return UNDETERMINED
    return best


#: Languages each toxicity model was trained on (ISO 639-1). ``alt-profanity-check`` learned English
#: profanity; Detoxify's ``original`` and ``unbiased`` checkpoints are English (Jigsaw 2018/2019);
#: its ``multilingual`` checkpoint (XLM-RoBERTa, Jigsaw 2020) covers these seven.
TOXICITY_LANGUAGES: dict[str, frozenset[str]] = {
    "alt-profanity-check": frozenset({"en"}),
    "detoxify:multilingual": frozenset({"en", "fr", "es", "it", "pt", "tr", "ru"}),
    "detoxify": frozenset({"en"}),
}


def toxicity_languages(backend: str) -> frozenset[str] | None:
    """Languages the toxicity ``backend`` covers, or None when unknown (then every text is scored).

    A Detoxify checkpoint is ``multilingual`` when its file name says so (Detoxify's releases are
    named ``multilingual_debiased-0b549669.ckpt``, ``toxic_original-c1212f89.ckpt``, ...).

    >>> sorted(toxicity_languages("alt-profanity-check"))
    ['en']
    >>> "pt" in toxicity_languages("detoxify:multilingual_debiased-0b549669.ckpt")
    True
    >>> toxicity_languages("my-own-model") is None
    True
    """
    if backend.startswith("detoxify:"):
        name = "detoxify:multilingual" if "multilingual" in backend.lower() else "detoxify"
        return TOXICITY_LANGUAGES[name]
    return TOXICITY_LANGUAGES.get(backend)


def uncovered_language(text: str, covered: frozenset[str] | None) -> str | None:
    """The language of ``text`` when it is known and outside ``covered``, else None (score it).

    An undetermined text ("ok", a number) is scored: nothing says the model cannot read it.

    >>> uncovered_language("Não é permitido levar o portátil", frozenset({"en"}))
    'pt'
    >>> uncovered_language("You may not take it", frozenset({"en"})) is None
    True
    """
    if covered is None:
        return None
    lang = detect_language(text)
    return None if lang == UNDETERMINED or lang in covered else lang
