// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title MockUSDC: a test stand-in for Circle's FiatToken (USDC) v2.2.
/// @notice 6 decimals, owner-only `mint`, and USDC's own owner-gated
/// `blacklist`, `unBlacklist`, `pause` and `unpause` (one role here instead
/// of USDC's separate masterMinter, blacklister and pauser). `transferFrom`
/// follows FiatToken v2.2's storage pattern, so gas figures measured against
/// it carry over: the blacklist flag lives in the top bit of the balance
/// word (`balanceAndBlacklistStates`), the `paused` flag shares a slot with
/// the owner, and allowances are a plain nested mapping.
/// Never deploy this anywhere but a local test chain.
contract MockUSDC {
    string public constant name = "Mock USD Coin";
    string public constant symbol = "USDC";
    uint8 public constant decimals = 6;
    string public constant currency = "USD";

    uint256 private constant BLACKLIST_BIT = 1 << 255;

    // slot 0: owner (20 bytes) and paused (1 byte), as FiatToken packs pauser and paused.
    address public owner;
    bool public paused;
    uint256 public totalSupply;
    mapping(address => uint256) internal balanceAndBlacklistStates;
    mapping(address => mapping(address => uint256)) internal allowed;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event Blacklisted(address indexed account);
    event UnBlacklisted(address indexed account);
    event Pause();
    event Unpause();

    modifier onlyOwner() {
        require(msg.sender == owner, "Ownable: caller is not the owner");
        _;
    }

    modifier whenNotPaused() {
        require(!paused, "Pausable: paused");
        _;
    }

    modifier notBlacklisted(address account) {
        require(!isBlacklisted(account), "Blacklistable: account is blacklisted");
        _;
    }

    constructor() {
        owner = msg.sender;
    }

    function isBlacklisted(address account) public view returns (bool) {
        return balanceAndBlacklistStates[account] & BLACKLIST_BIT != 0;
    }

    function balanceOf(address account) external view returns (uint256) {
        return balanceAndBlacklistStates[account] & ~BLACKLIST_BIT;
    }

    function allowance(address holder, address spender) external view returns (uint256) {
        return allowed[holder][spender];
    }

    function mint(address to, uint256 amount)
        external
        whenNotPaused
        onlyOwner
        notBlacklisted(to)
        returns (bool)
    {
        require(to != address(0), "FiatToken: mint to the zero address");
        totalSupply += amount;
        _setBalance(to, _balanceOf(to) + amount);
        emit Transfer(address(0), to, amount);
        return true;
    }

    function approve(address spender, uint256 value)
        external
        whenNotPaused
        notBlacklisted(msg.sender)
        notBlacklisted(spender)
        returns (bool)
    {
        allowed[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    function transfer(address to, uint256 value)
        external
        whenNotPaused
        notBlacklisted(msg.sender)
        notBlacklisted(to)
        returns (bool)
    {
        _transfer(msg.sender, to, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value)
        external
        whenNotPaused
        notBlacklisted(msg.sender)
        notBlacklisted(from)
        notBlacklisted(to)
        returns (bool)
    {
        uint256 current = allowed[from][msg.sender];
        require(value <= current, "ERC20: transfer amount exceeds allowance");
        allowed[from][msg.sender] = current - value;
        _transfer(from, to, value);
        return true;
    }

    function blacklist(address account) external onlyOwner {
        balanceAndBlacklistStates[account] |= BLACKLIST_BIT;
        emit Blacklisted(account);
    }

    function unBlacklist(address account) external onlyOwner {
        balanceAndBlacklistStates[account] &= ~BLACKLIST_BIT;
        emit UnBlacklisted(account);
    }

    function pause() external onlyOwner {
        paused = true;
        emit Pause();
    }

    function unpause() external onlyOwner {
        paused = false;
        emit Unpause();
    }

    function _transfer(address from, address to, uint256 value) internal {
        require(from != address(0), "ERC20: transfer from the zero address");
        require(to != address(0), "ERC20: transfer to the zero address");
        uint256 fromBalance = _balanceOf(from);
        require(value <= fromBalance, "ERC20: transfer amount exceeds balance");
        _setBalance(from, fromBalance - value);
        _setBalance(to, _balanceOf(to) + value);
        emit Transfer(from, to, value);
    }

    function _balanceOf(address account) internal view returns (uint256) {
        return balanceAndBlacklistStates[account] & ~BLACKLIST_BIT;
    }

    /// Keeps the blacklist bit; FiatToken caps balances below it.
    function _setBalance(address account, uint256 balance) internal {
        require(balance < BLACKLIST_BIT, "FiatTokenV2_2: Balance exceeds (2^255 - 1)");
        balanceAndBlacklistStates[account] = (balanceAndBlacklistStates[account] & BLACKLIST_BIT) | balance;
    }
}
