"""Migration stream v2 (x86 HVM): format, parser, writer, sinks, summary.

Mirrors Xen's libxenguest stream (``tools/libs/guest/xg_sr_*``,
``docs/specs/libxc-migration-stream.pandoc``), one module per job:

* ``format``  - wire constants, headers, record types, PFN words (``xg_sr_stream_format.h``);
* ``hvm``     - the x86 HVM records besides memory: CPU policy, params, context;
* ``records`` - ``Record`` and ``RECORD_RULES``, the per-type rules the parser and the
  restorer share (``xg_sr_restore.c`` ``process_record``);
* ``parser``  - the pure push parser (``xg_sr_restore.c`` ``read_record``);
* ``writer``  - the writer (``xg_sr_save.c``);
* ``sinks``   - every file and socket: the sinks, ``read_stream`` and the TCP receive;
* ``summary`` - what ``xmig inspect`` prints.

The names below are re-exported so ``from migrate.stream import X`` keeps working;
new code imports from the submodule that defines the name.
"""

from __future__ import annotations

from hypervisor.abi import MAX_BATCH_SIZE, PAGE_SHIFT, PAGE_SIZE, PFINFO_HAS_DATA, PFINFO_KNOWN, PFInfo

from migrate.stream.format import (
    DHDR_SIZE,
    DHDR_TYPE_X86_HVM,
    DHDR_TYPE_X86_PV,
    IHDR_ID,
    IHDR_MARKER,
    IHDR_OPT_BIG_ENDIAN,
    IHDR_SIZE,
    IHDR_VERSION,
    PAGE_DATA_PFN_MASK,
    PAGE_DATA_TYPE_MASK,
    PAGE_DATA_TYPE_SHIFT,
    REC_ALIGN,
    REC_LENGTH_MAX,
    REC_TYPE_OPTIONAL,
    RHDR_SIZE,
    DomainHeader,
    ImageHeader,
    RecType,
    StreamError,
    TscInfo,
    make_pfn_words,
    pack_hvm_params,
    rec_type_name,
    split_pfn_words,
    unpack_hvm_params,
)
from migrate.stream.hvm import (
    HVM_PARAM_ACPI_IOPORTS_LOCATION,
    HVM_PARAM_BUFIOREQ_PFN,
    HVM_PARAM_CONSOLE_PFN,
    HVM_PARAM_IDENT_PT,
    HVM_PARAM_IOREQ_PFN,
    HVM_PARAM_NR_IOREQ_SERVER_PAGES,
    HVM_PARAM_STORE_PFN,
    HVM_SAVE_MAGIC,
    XEN_CPUID_NO_SUBLEAF,
    check_hvm_context,
    default_cpuid_policy,
    default_hvm_context,
    default_hvm_params,
    default_msr_policy,
)
from migrate.stream.parser import ParsedStream, StreamParser
from migrate.stream.records import HVM_HANDLED, RECORD_RULES, Record, RecordRule, check_page_data
from migrate.stream.sinks import (
    CallbackSink,
    FileSink,
    NullSink,
    RecordSink,
    Sink,
    TcpSink,
    TeeSink,
    parse_stream,
    read_stream,
    receive_stream,
)
from migrate.stream.summary import StreamSummary, summarise_stream
from migrate.stream.writer import StreamWriter

__all__ = [
    "RecType", "REC_TYPE_OPTIONAL", "REC_LENGTH_MAX", "StreamError", "Record", "ImageHeader",
    "DomainHeader", "TscInfo", "make_pfn_words", "split_pfn_words", "check_page_data",
    "Sink", "NullSink", "FileSink", "TcpSink", "TeeSink", "CallbackSink", "RecordSink", "StreamWriter",
    "StreamParser", "ParsedStream", "read_stream", "parse_stream", "StreamSummary",
    "summarise_stream", "default_cpuid_policy", "default_msr_policy", "default_hvm_params",
    "default_hvm_context", "check_hvm_context", "pack_hvm_params", "unpack_hvm_params", "rec_type_name",
    "RECORD_RULES", "RecordRule", "receive_stream",
]
