"""The book's citation style: author and year in round brackets, "(Merity et al., 2016)", in the text, and the same
"Merity et al., 2016" as the label of each entry of the references page, so that a reader finds a citation in the
list by what the text says (pybtex's default labels are "[MXBS16]").

A Sphinx extension that _config.yml loads (sphinx.local_extensions); it registers the pybtex formatting style
`author_year_labels` (bibtex_default_style) and the sphinxcontrib-bibtex referencing style `author_year_round`
(bibtex_reference_style). Both are registered on import, before sphinxcontrib-bibtex looks them up.
"""
from collections import Counter
from dataclasses import dataclass, field

import sphinxcontrib.bibtex.plugin
from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle


def author_year(entry) -> str:
    """ "Shazeer, 2019", "Zhang and Sennrich, 2019", "Merity et al., 2016": the text's citation, without markup."""
    names = [Text.from_latex(" ".join(person.last_names)).render_as("text")
             for person in entry.persons.get("author", [])]
    if len(names) > 2 or "others" in names:
        names = [f"{names[0]} et al."]
    return f"{' and '.join(names)}, {entry.fields['year']}"


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [author_year(entry) for entry in entries]
        repeated, seen = Counter(labels), Counter()
        for label in labels:  # two works of the same authors and year: 2019a, 2019b
            if repeated[label] > 1:
                seen[label] += 1
                label += "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            yield label


class AuthorYearLabelsStyle(UnsrtStyle):
    default_label_style = "author_year_labels"
    default_sorting_style = "author_year_title"


def round_brackets() -> BracketStyle:
    return BracketStyle(left="(", right=")")


@dataclass
class AuthorYearRound(AuthorYearReferenceStyle):
    bracket_parenthetical: BracketStyle = field(default_factory=round_brackets)
    bracket_textual: BracketStyle = field(default_factory=round_brackets)
    bracket_author: BracketStyle = field(default_factory=round_brackets)
    bracket_label: BracketStyle = field(default_factory=round_brackets)
    bracket_year: BracketStyle = field(default_factory=round_brackets)


register_plugin("pybtex.style.labels", "author_year_labels", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "author_year_labels", AuthorYearLabelsStyle)
sphinxcontrib.bibtex.plugin.register_plugin("sphinxcontrib.bibtex.style.referencing", "author_year_round",
                                            AuthorYearRound)


def setup(app):
    return {"parallel_read_safe": True, "parallel_write_safe": True}
