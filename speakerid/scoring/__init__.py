"""Scores and what they are worth: cosine and AS-Norm (``scores``), trial lists
(``trials``), EER / minDCF (``metrics``), whole-folder evaluation (``evaluation``) and its
plots. Pure functions of embeddings and labels: imports ``speakerid.audio`` for evaluation's
file lists and nothing above.
"""
