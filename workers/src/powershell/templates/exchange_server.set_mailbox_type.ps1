$mailbox = Get-Mailbox -Identity ([string]$p.identity)
$types = @{ UserMailbox = 'Regular'; SharedMailbox = 'Shared'; RoomMailbox = 'Room'; EquipmentMailbox = 'Equipment' }
$type = $types[[string]$mailbox.RecipientTypeDetails]
$StewardPrior = [ordered]@{ type = $type }
if ($type -eq [string]$p.type) {
    return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardRecipient $mailbox) -Prior $StewardPrior)
}
Set-Mailbox -Identity ([string]$mailbox.DistinguishedName) -Type ([string]$p.type) -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardRecipient (Get-Mailbox -Identity ([string]$mailbox.DistinguishedName))) -Prior $StewardPrior)
