"""HVM parameters: the per-domain values a domain builder sets and a saver reads back.

Mirrors ``xen/include/public/hvm/params.h`` (the ``HVM_PARAM_*`` indices) and the
HVMOP_set_param / HVMOP_get_param pair (``xc_hvm_param_set`` / ``xc_hvm_param_get``):
the builder (``xg_dom_x86.c``: ``alloc_magic_pages_hvm``) points the params at the
special pages it populated; the saver (``xg_sr_save_x86_hvm.c``: ``write_hvm_params``)
sends the non-zero ones in an HVM_PARAMS record.
"""

from __future__ import annotations

HVM_PARAM_STORE_PFN = 1
HVM_PARAM_IOREQ_PFN = 5
HVM_PARAM_BUFIOREQ_PFN = 6
HVM_PARAM_IDENT_PT = 12
HVM_PARAM_CONSOLE_PFN = 17
HVM_PARAM_ACPI_IOPORTS_LOCATION = 19
HVM_PARAM_PAGING_RING_PFN = 27
HVM_PARAM_MONITOR_RING_PFN = 28
HVM_PARAM_SHARING_RING_PFN = 29
HVM_PARAM_IOREQ_SERVER_PFN = 32
HVM_PARAM_NR_IOREQ_SERVER_PAGES = 33

#: The order write_hvm_params queries them in (those this model sets; the others
#: are zero and a saver leaves zero params out).
SAVE_ORDER = (HVM_PARAM_STORE_PFN, HVM_PARAM_IOREQ_PFN, HVM_PARAM_BUFIOREQ_PFN, HVM_PARAM_PAGING_RING_PFN,
              HVM_PARAM_MONITOR_RING_PFN, HVM_PARAM_SHARING_RING_PFN, HVM_PARAM_CONSOLE_PFN,
              HVM_PARAM_ACPI_IOPORTS_LOCATION, HVM_PARAM_IDENT_PT, HVM_PARAM_IOREQ_SERVER_PFN,
              HVM_PARAM_NR_IOREQ_SERVER_PAGES)
