if (-not (Get-Command Get-Mailbox -ErrorAction SilentlyContinue)) {
    foreach ($StewardSnapIn in @('Microsoft.Exchange.Management.PowerShell.SnapIn', 'Microsoft.Exchange.Management.PowerShell.E2010')) {
        if (Get-PSSnapin -Registered -Name $StewardSnapIn -ErrorAction SilentlyContinue) {
            Add-PSSnapin -Name $StewardSnapIn
            break
        }
    }
}
if (-not (Get-Command Get-Mailbox -ErrorAction SilentlyContinue)) {
    throw 'The Exchange Management Shell is not installed on this machine: run Exchange scripts on the Exchange server, or set exchange_runner so that Steward reaches the server by PowerShell remoting.'
}
function Find-StewardExUser {
    param([string]$Identity)
    try {
        return (Get-User -Identity $Identity)
    } catch {
        if ($_.Exception.GetType().Name -eq 'ManagementObjectNotFoundException') { return $null }
        throw
    }
}
function Get-StewardExUser {
    param([string]$Identity)
    $found = Find-StewardExUser -Identity $Identity
    if ($null -eq $found) { throw (New-Object System.Management.Automation.ItemNotFoundException ("The operation couldn't be performed because object '" + $Identity + "' couldn't be found.")) }
    return $found
}
function Get-StewardRecipientDn {
    param([string]$Identity)
    return [string](Get-Recipient -Identity $Identity).DistinguishedName
}
function ConvertTo-StewardRecipient {
    param($Recipient)
    return [ordered]@{
        distinguished_name = [string]$Recipient.DistinguishedName
        recipient_type_details = [string]$Recipient.RecipientTypeDetails
        alias = [string]$Recipient.Alias
        primary_smtp_address = [string]$Recipient.PrimarySmtpAddress
        hidden_from_address_lists_enabled = [bool]$Recipient.HiddenFromAddressListsEnabled
    }
}
