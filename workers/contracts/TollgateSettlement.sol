// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// The two reads `fundsOf` makes of the token.
interface IERC20Funds {
    function balanceOf(address account) external view returns (uint256);
    function allowance(address holder, address spender) external view returns (uint256);
}

/// @title TollgateSettlement: settles a batch of Tollgate charges in one transaction.
/// @notice The operator (Tollgate's settler) calls `settle` with a batch id and,
/// per payer, the sum of that payer's charges in the batch. Each payer is
/// charged with `token.transferFrom(payer, treasury, amount)` on its own: a
/// payer whose transfer fails (blacklisted, allowance or balance short) gets a
/// `PayerFailed` event and the rest of the batch settles. A settled payer is
/// proven by the token's own `Transfer(payer, treasury, amount)` log in the
/// same receipt (no second event of ours: it would cost ~1,800 gas a payer).
/// A batch id settles at most once (`BatchAlreadySettled`), recorded in a
/// bitmap so a fresh id costs one warm word write, and `isSettled` answers
/// whether it did — the question a settler asks after an unknown outcome.
///
/// Calldata is packed: each entry is one word, the payer in the high 160 bits
/// and the amount (token atomic units, < 2^96) in the low 96 bits.
contract TollgateSettlement {
    /// The most payers one batch may name.
    uint256 public constant MAX_PAYERS = 1000;
    /// Gas given to each payer's `transferFrom`. A transfer that fails for
    /// want of gas must revert the whole batch, never pass for the payer's
    /// failure: the loop refuses to start a transfer without this much left.
    uint256 public constant TRANSFER_GAS = 80000;

    address public owner;
    address public operator;
    address public treasury;
    /// Settled batch ids: bit (id & 255) of word (id >> 8).
    mapping(uint256 => uint256) private settledWords;

    event PayerFailed(uint256 indexed batchId, address indexed payer, uint256 amount);
    event BatchSettled(uint256 indexed batchId, uint256 payersSettled, uint256 total);
    event OwnerChanged(address indexed owner);
    event OperatorChanged(address indexed operator);
    event TreasuryChanged(address indexed treasury);

    error NotOwner();
    error NotOperator();
    error ZeroAddress();
    error NotAToken(address token);
    error EmptyBatch();
    error BatchTooLarge(uint256 payers);
    error BatchAlreadySettled(uint256 batchId);
    error GasTooLow();

    constructor(address operator_, address treasury_) {
        if (operator_ == address(0) || treasury_ == address(0)) revert ZeroAddress();
        owner = msg.sender;
        operator = operator_;
        treasury = treasury_;
        emit OwnerChanged(msg.sender);
        emit OperatorChanged(operator_);
        emit TreasuryChanged(treasury_);
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    function transferOwnership(address owner_) external onlyOwner {
        if (owner_ == address(0)) revert ZeroAddress();
        owner = owner_;
        emit OwnerChanged(owner_);
    }

    function setOperator(address operator_) external onlyOwner {
        if (operator_ == address(0)) revert ZeroAddress();
        operator = operator_;
        emit OperatorChanged(operator_);
    }

    function setTreasury(address treasury_) external onlyOwner {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasuryChanged(treasury_);
    }

    /// Records `batchId` as settled; reverts when it already was.
    function _markSettled(uint256 batchId) private {
        uint256 wordIndex = batchId >> 8;
        uint256 bit = 1 << (batchId & 0xff);
        uint256 word = settledWords[wordIndex];
        if (word & bit != 0) revert BatchAlreadySettled(batchId);
        settledWords[wordIndex] = word | bit;
    }

    /// Whether batch `batchId` settled.
    function isSettled(uint256 batchId) external view returns (bool) {
        return settledWords[batchId >> 8] & (1 << (batchId & 0xff)) != 0;
    }

    /// Each payer's token balance and its allowance to this contract, in
    /// one call: what the settler reads before it closes a batch (payers who
    /// cannot pay now wait) and what key creation checks a budget against.
    function fundsOf(address token, address[] calldata payers)
        external
        view
        returns (uint256[] memory balances, uint256[] memory allowances)
    {
        balances = new uint256[](payers.length);
        allowances = new uint256[](payers.length);
        for (uint256 i = 0; i < payers.length; ++i) {
            balances[i] = IERC20Funds(token).balanceOf(payers[i]);
            allowances[i] = IERC20Funds(token).allowance(payers[i], address(this));
        }
    }

    /// Settles batch `batchId`: for each entry, `token.transferFrom(payer,
    /// treasury, amount)`. Returns how many payers paid and their total.
    function settle(uint256 batchId, address token, bytes32[] calldata entries)
        external
        returns (uint256 payersSettled, uint256 total)
    {
        if (msg.sender != operator) revert NotOperator();
        if (entries.length == 0) revert EmptyBatch();
        if (entries.length > MAX_PAYERS) revert BatchTooLarge(entries.length);
        // A call to an address without code "succeeds": refuse it.
        if (token.code.length == 0) revert NotAToken(token);
        _markSettled(batchId);

        address to = treasury;
        bool gasTooLow;
        assembly ("memory-safe") {
            // transferFrom(from, to, value) built once at the free pointer
            // (never claimed: nothing allocates during the loop); only the
            // payer and amount words change per entry.
            let call_ := mload(0x40)
            mstore(call_, shl(224, 0x23b872dd))
            mstore(add(call_, 0x24), to)
            let end := add(entries.offset, shl(5, entries.length))
            for { let at := entries.offset } lt(at, end) { at := add(at, 0x20) } {
                // TRANSFER_GAS plus what the loop itself needs.
                if lt(gas(), 90000) {
                    gasTooLow := 1
                    break
                }
                let entry := calldataload(at)
                mstore(add(call_, 0x04), shr(96, entry))
                mstore(add(call_, 0x44), and(entry, 0xffffffffffffffffffffffff))
                mstore(0x00, 0)
                // TRANSFER_GAS
                let ok := call(80000, token, 0, call_, 0x64, 0x00, 0x20)
                // A token that returns data must return true.
                switch and(ok, or(iszero(returndatasize()), eq(mload(0x00), 1)))
                case 1 {
                    total := add(total, and(entry, 0xffffffffffffffffffffffff))
                    payersSettled := add(payersSettled, 1)
                }
                default {
                    // PayerFailed(batchId, payer, amount)
                    mstore(0x00, and(entry, 0xffffffffffffffffffffffff))
                    log3(
                        0x00,
                        0x20,
                        0x59fbc11ca26f387103572115b04bacef09a104e8df24f8f471b84d34a2f6cc07,
                        batchId,
                        shr(96, entry)
                    )
                }
            }
        }
        if (gasTooLow) revert GasTooLow();
        emit BatchSettled(batchId, payersSettled, total);
    }
}
