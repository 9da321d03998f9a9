"""From arXiv LaTeX sources to the ``arxiv_structured`` and ``arxiv_plain`` corpora."""
