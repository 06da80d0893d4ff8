"""Documents a reader can trust about a model: releases anyone can verify (`release`: a signed
manifest of every file). The model card and transparency report will join them here."""
