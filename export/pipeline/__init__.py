"""The export run: plan the request, build and reparameterize the model, convert each encoder with its
target, verify every artifact against the train-time model, guard compressed ones, add classifier artifacts.

Modules in run order: ``plan`` (validate before heavy work), ``encoders`` (what a backend converts),
``api`` (``export_model``, the stages), ``verify`` (inputs and the artifact comparison), ``guard`` (the
accuracy guard stage), ``classifier`` (the classifier-artifact stage), ``progress`` (events, stderr display).
"""
