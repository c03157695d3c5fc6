"""The presets, one short override file each, read by `cirtutor.config` (`get_preset`, `PRESETS`).

A preset file says only how its preset differs from the defaults, which are the paper's settings (the
dataclasses of cirtutor/config.py), or from another preset:

    BASE = "tiny"                        # optional: the preset it starts from (none: the defaults)
    OVERRIDES = {
        "data.dataset": "fashioniq",     # why it is set, with the paper's section or the doc that says so
    }

The keys are the `section.field` names `--set` takes; the values are Python values of the field's type.
`cirtutor --preset NAME --set ...` then overrides a preset further, field by field. A new preset is a new
file here and its name in NAMES.
"""
NAMES = ("tiny", "tiny_fashioniq", "paper_fashioniq", "paper_cirr")     # the order `--preset` lists them in
