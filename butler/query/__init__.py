"""The ``where`` query language: parse, print and compile constraint expressions.

``parse_where`` turns text into a tree of ``butler.query.ast`` nodes, ``to_where`` turns a
tree back into canonical text, and ``compile_where`` turns a tree into a parameterised SQL
fragment using a caller-supplied ``NameResolver``.  Nothing here touches a database.
"""

from butler.query.ast import (
    And,
    BindRef,
    Comparison,
    ComparisonOperator,
    Identifier,
    InList,
    IsNull,
    Literal,
    Node,
    Not,
    Or,
    Range,
    Value,
    to_where,
)
from butler.query.compiler import (
    MAX_PARAMETERS,
    Column,
    ColumnKind,
    NameResolver,
    compile_where,
    referenced_names,
)
from butler.query.parser import (
    MAX_CONDITIONS,
    MAX_EXPRESSION_LENGTH,
    MAX_NESTING_DEPTH,
    parse_where,
)

__all__ = [
    "MAX_CONDITIONS",
    "MAX_EXPRESSION_LENGTH",
    "MAX_NESTING_DEPTH",
    "MAX_PARAMETERS",
    "And",
    "BindRef",
    "Column",
    "ColumnKind",
    "Comparison",
    "ComparisonOperator",
    "Identifier",
    "InList",
    "IsNull",
    "Literal",
    "NameResolver",
    "Node",
    "Not",
    "Or",
    "Range",
    "Value",
    "compile_where",
    "parse_where",
    "referenced_names",
    "to_where",
]
