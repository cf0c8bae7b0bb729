"""Small model definitions (no torchvision): for the demo, tests and benchmarks.

Import the submodules directly (``torchferry.zoo.digits``, ``torchferry.zoo.resnet``); this
package imports nothing itself, so that ``torchferry.zoo.resnet:resnet18`` loads only torch.
"""
