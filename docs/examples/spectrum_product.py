"""A new data product: a 1-D spectrum, wavelength and flux with their units.

Explained in docs/adding-a-data-product.md.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import astropy.units as u
import numpy as np

from butler import Formatter, register_formatter, register_storage_class


@register_storage_class("Spectrum", default_formatter="spectrum-npz")
@dataclass
class Spectrum:
    wavelength: u.Quantity
    flux: u.Quantity


@register_formatter
class SpectrumFormatter(Formatter):
    name = "spectrum-npz"
    storage_class = "Spectrum"
    extension = ".npz"
    components = frozenset({"wavelength", "flux"})  # "spectrum.flux" reads one array
    parameters = frozenset({"wavelength_range"})  # (low, high) as Quantities

    def write(self, obj: Spectrum, path: Any) -> None:
        units = np.array([str(obj.wavelength.unit), str(obj.flux.unit)])
        with path.open("xb") as f:
            np.savez(f, wavelength=obj.wavelength.value, flux=obj.flux.value, units=units)

    def read(self, source: Any, index: Any, *, component: Any = None, parameters: Any = None):
        with np.load(io.BytesIO(source.read(0, source.size)), allow_pickle=False) as npz:
            w_unit, f_unit = npz["units"]
            spectrum = Spectrum(npz["wavelength"] * u.Unit(w_unit), npz["flux"] * u.Unit(f_unit))
        if parameters and "wavelength_range" in parameters:
            low, high = parameters["wavelength_range"]
            keep = (spectrum.wavelength >= low) & (spectrum.wavelength <= high)
            spectrum = Spectrum(spectrum.wavelength[keep], spectrum.flux[keep])
        return getattr(spectrum, component) if component else spectrum
