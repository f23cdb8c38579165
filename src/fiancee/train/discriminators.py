"""The OASIS U-Net discriminator, kept importable from here: it lives in
:mod:`fiancee.backbones.oasis_discriminator` so that a task (one layer below training) can load the
discriminator its backbone was trained with (the ``oasis`` critic of eq. 3 copies it)."""

from ..backbones.oasis_discriminator import FAKE, UNetDiscriminator

__all__ = ["UNetDiscriminator", "FAKE"]
