"""The decision: who may have which certificate, and the pipeline that issues it.

``model`` holds the frozen values that pass between stages; ``permits`` authenticates a
caller into a ``Permit`` (an operator's grant or a bootstrap token: two implementations
of one interface); ``pipeline`` runs authenticate -> permit -> render -> check ->
prepare -> sign -> record; ``reservation`` is the one place that gives back what an
issuance held when it fails. ``inventory`` and ``token_admin`` are the operators' other
verbs over the same permits and ledger.
"""
